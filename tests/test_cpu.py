"""jaxface.cpu.kept_awake: one SCHED_IDLE thread for the duration of the block, none after."""

from __future__ import annotations

import os
import threading

import pytest

from jaxface.cpu import can_keep_awake, kept_awake


def _spinners():
    return [t for t in threading.enumerate() if t.name == "jaxface-kept-awake"]


@pytest.mark.skipif(not can_keep_awake(), reason="needs Linux SCHED_IDLE and two cores")
def test_kept_awake_runs_one_idle_priority_thread_only_inside_the_block():
    assert not _spinners()
    with kept_awake():
        (spinner,) = _spinners()
        assert spinner.is_alive()
        for _ in range(1000):  # the thread sets its own policy once started
            if os.sched_getscheduler(spinner.native_id) == os.SCHED_IDLE:
                break
            os.sched_yield()
        assert os.sched_getscheduler(spinner.native_id) == os.SCHED_IDLE
    assert not _spinners() and not spinner.is_alive()
    with kept_awake(enabled=False):
        assert not _spinners()


def test_kept_awake_ends_its_thread_when_the_block_raises():
    with pytest.raises(KeyError):
        with kept_awake():
            raise KeyError("x")
    assert not _spinners()
