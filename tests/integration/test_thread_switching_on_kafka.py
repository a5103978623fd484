"""A running pipeline's threads hand the GIL over every millisecond (engine/switching.py), and the process gets its own interval back."""

from __future__ import annotations

import sys

import polars as pl

import lockgate as lg
from tests.conftest import produce


def test_a_pipeline_runs_its_batches_with_a_one_millisecond_switch_interval_and_restores_it(brokers, make_topic, tmp_path, unique):
    name = f"switch-{unique}"
    topic = make_topic(f"{name}-in", partitions=1)
    produce(brokers, topic, [b'{"v": %d}' % i for i in range(20)])
    seen: list[float] = []

    def note(df: pl.DataFrame) -> pl.DataFrame:
        if df.height:  # a batch on the runner's thread (the plan also calls it once on an empty frame, for its schema)
            seen.append(sys.getswitchinterval())
        return df

    was = sys.getswitchinterval()
    pipe = lg.Pipeline(name, brokers=brokers, state=str(tmp_path / name))
    pipe.source(topic, format=lg.JSON(schema={"v": pl.Int64})).map_batches(note).to_kafka(f"{name}-out")
    assert pipe.run(until="caught_up", timeout=120, progress=False).records == 20
    assert seen and set(seen) == {0.001}
    assert sys.getswitchinterval() == was
