"""A pipeline restarted under its name with another source topic reads that topic.

Found while writing the docstring examples (issue 13, point 6): the consumer joins its
group with static membership (``group.instance.id``), and within the session timeout
of the last run the broker hands the rejoining member its previous assignment, the
partitions of the old topic.  ``run(until="caught_up")`` then found every assigned
partition read to its end and returned at once, having read nothing; the source now
ignores partitions of topics the pipeline does not read until the group takes them back.
"""

from __future__ import annotations

import polars as pl
import pytest

import lockgate as lg

pytestmark = pytest.mark.kafka


def test_a_pipeline_restarted_with_a_new_source_topic_reads_it(brokers, tmp_path, unique):
    for records in (100, 200):
        topic = lg.sample_clicks(records=records, seed=1, brokers=brokers)
        pipe = lg.Pipeline(f"topic-change-{unique}", brokers=brokers, state=str(tmp_path / f"state-{records}"))
        pipe.source(topic, format=lg.JSON(schema={"user": pl.String})).to_table("clicks")
        summary = pipe.run(until="caught_up", timeout=60)
        assert summary.records == records, f"the run on {topic} read {summary.records} of its {records} records"
