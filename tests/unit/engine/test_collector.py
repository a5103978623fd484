"""The cyclic garbage collector runs between batches while a runner runs, and is restored after."""

from __future__ import annotations

import gc
import weakref

from lockgate.engine.collector import BatchCollector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_inside_a_run_automatic_collection_is_off_and_the_older_heap_is_frozen():
    was = gc.isenabled()
    with BatchCollector():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
    assert gc.isenabled() == was
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_during_a_batch_is_freed_after_it_and_an_old_one_by_the_periodic_full_collection():
    with BatchCollector(full_every_s=3600) as collector:
        young = _cycle()
        assert young() is not None, "automatic collection is off inside a batch"
        collector.after_batch()
        assert young() is None, "the young generations are collected after each batch"
        keep = _Node()
        keep.other = _Node()
        keep.other.other = keep
        old = weakref.ref(keep)
        collector.after_batch()  # it survives, into the oldest generation
        del keep
        collector.after_batch()
        assert old() is not None, "only a full collection walks the oldest generation"
        collector.full_every_s = 0
        collector.after_batch()
        assert old() is None


def test_the_last_of_several_runners_restores_the_collector_as_it_found_it():
    gc.disable()
    try:
        with BatchCollector(), BatchCollector():
            pass
        assert not gc.isenabled(), "it was off before: it stays off"
    finally:
        gc.enable()
    outer = BatchCollector()
    outer.__enter__()
    with BatchCollector():
        pass
    assert not gc.isenabled(), "another runner still runs"
    outer.__exit__(None, None, None)
    assert gc.isenabled()
