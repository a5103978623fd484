"""lockgate: a columnar micro-batch stream engine on Apache Arrow.

Kafka in, Polars operators over whole batches, LanceDB state, exactly once.

Examples
--------
>>> import lockgate as lg
>>> import polars as pl
>>> pipe = lg.Pipeline("clicks", brokers="127.0.0.1:9092", state="/tmp/lockgate-doc")
>>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
>>> clicks.filter(pl.col("url").str.starts_with("/p/")).to_kafka("pages", key="user")
"""

from lockgate.engine.config import BatchPolicy
from lockgate.engine.demo import sample_clicks, sample_users
from lockgate.engine.execution import run_plan
from lockgate.engine.avro_format import Avro
from lockgate.engine.protobuf_format import Protobuf
from lockgate.engine.formats import JSON, ArrowIPC, Raw
from lockgate.engine.pipeline import Pipeline
from lockgate.engine.plan import Stream
from lockgate.engine.runner import RunSummary
from lockgate.errors import (
    AssignmentError,
    BrokerError,
    CommitError,
    DecodeError,
    KafkaOptionsError,
    LockgateError,
    PipelineDefinitionError,
    RegistryError,
    StorageError,
)
from lockgate.operators.windows import Hopping, Session, Sliding, Tumbling
from lockgate.storage.state import read_state
from lockgate.storage.sink_tables import list_tables, read_table

__all__ = [
    "run_plan",
    "JSON",
    "Avro",
    "Protobuf",
    "ArrowIPC",
    "BatchPolicy",
    "AssignmentError",
    "BrokerError",
    "CommitError",
    "DecodeError",
    "Hopping",
    "KafkaOptionsError",
    "LockgateError",
    "Pipeline",
    "PipelineDefinitionError",
    "RegistryError",
    "Raw",
    "RunSummary",
    "Session",
    "Sliding",
    "StorageError",
    "Stream",
    "Tumbling",
    "list_tables",
    "read_state",
    "read_table",
    "sample_clicks",
    "sample_users",
]

__version__ = "0.1.0"
