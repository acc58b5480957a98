"""Short calls on a CPU whose idle cores fall asleep.

XLA's CPU runtime wakes a parked worker thread for every parallel op. Where an idle core
halts (virtual machines with guest halt-polling do this after a fraction of a second idle),
that wake-up is slow enough that the calling thread finishes each op alone: the first
calls after a pause run on one core. PyTorch's OpenMP workers spin instead of parking.
`kept_awake` gets the same effect without taking a core from the work: a thread at Linux's
SCHED_IDLE priority, which runs only when nothing else wants the core, keeps it from halting.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time


def can_keep_awake() -> bool:
    """Whether `kept_awake` does anything here: Linux (SCHED_IDLE), more than one core."""
    return hasattr(os, "SCHED_IDLE") and (os.cpu_count() or 1) > 1


@contextlib.contextmanager
def kept_awake(enabled: bool = True):
    """While the block runs, one extra thread at SCHED_IDLE priority yields in a loop (the GIL
    released), so a core is never idle long enough to halt. A no-op where `can_keep_awake()`
    is False or `enabled` is False. Results are unchanged; only latency after idle gaps is."""
    if not (enabled and can_keep_awake()):
        yield
        return
    stop = threading.Event()

    def spin():
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
        except OSError:
            return  # not permitted here: do nothing rather than compete with the work
        while not stop.is_set():
            time.sleep(0)  # a syscall: stays runnable, holds no GIL

    thread = threading.Thread(target=spin, name="jaxface-kept-awake", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
