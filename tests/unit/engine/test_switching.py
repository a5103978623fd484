"""The GIL's switch interval is 1 ms while a runner runs, and is restored after (engine/switching.py)."""

from __future__ import annotations

import sys

from lockgate.engine.switching import SWITCH_INTERVAL_S, ThreadSwitching


def test_inside_a_run_the_switch_interval_is_one_millisecond_and_after_it_what_it_was():
    was = sys.getswitchinterval()
    with ThreadSwitching():
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S == 0.001
    assert sys.getswitchinterval() == was


def test_the_last_of_several_runners_restores_the_interval_and_a_shorter_one_set_before_is_kept():
    was = sys.getswitchinterval()
    outer = ThreadSwitching()
    outer.__enter__()
    with ThreadSwitching():
        pass
    assert sys.getswitchinterval() == SWITCH_INTERVAL_S, "one runner still runs"
    outer.__exit__(None, None, None)
    assert sys.getswitchinterval() == was
    sys.setswitchinterval(0.0005)
    try:
        with ThreadSwitching():
            assert sys.getswitchinterval() == 0.0005, "never longer than the application set it"
    finally:
        sys.setswitchinterval(was)
