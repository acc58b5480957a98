"""XLA's CPU worker threads, one per core while a call runs.

Virtual machines may wake a thread on a busy virtual CPU rather than on one that has halted
(to let it stay halted, or because the hypervisor reports it preempted). After a pause every
worker XLA wakes for the next call then lands on the core that woke it, and they share that
core until the load balancer moves one, tens of milliseconds later. A thread pinned to one
core is woken there. `pinned` pins each worker to its own core for the duration of a block
and restores the previous affinity after, so JAX work outside the block is scheduled as
before.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Sequence


def can_pin() -> bool:
    """Whether pinning does anything here: Linux thread affinity and more than one allowed core."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1


POOL_THREAD_NAME = "tf_XLAEigen"  # XLA's CPU client names its intra-op pool "XLAEigen"


def xla_workers() -> tuple[int, ...]:
    """Native ids of XLA's intra-op worker threads in this process (one per core), by name;
    empty before JAX has started its CPU backend, where the name is not found, or off Linux."""
    if not os.path.isdir("/proc/self/task"):
        return ()
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == POOL_THREAD_NAME:
                    found.append(int(tid))
        except (OSError, ValueError):
            pass  # the thread ended meanwhile
    return tuple(sorted(found))


# Affinity is per process: blocks entered from several threads pin once and restore once.
_lock = threading.Lock()
_state = {"depth": 0, "saved": []}


def _pin(threads: Sequence[int]) -> list:
    """Pin `threads[i]` to the i-th allowed core (round robin), skipping threads that have
    ended; returns (thread, previous affinity) of those pinned."""
    cores = sorted(os.sched_getaffinity(0))
    saved = []
    for i, tid in enumerate(threads):
        try:
            previous = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {cores[i % len(cores)]})
            saved.append((tid, previous))
        except OSError:
            pass  # ended, or not ours to pin
    return saved


def _restore(saved: list) -> None:
    for tid, previous in saved:
        try:
            os.sched_setaffinity(tid, previous)
        except OSError:
            pass


@contextlib.contextmanager
def pinned(enabled: bool = True):
    """While the block runs, XLA's i-th worker (`xla_workers()`) may run only on the i-th core
    this process may use (round robin); each gets its previous affinity back when the last
    open block ends. A no-op unless `enabled`, JAX computes on the CPU and `can_pin()`."""
    import jax

    if not (enabled and jax.default_backend() == "cpu" and can_pin()):
        yield
        return
    with _lock:
        if _state["depth"] == 0:
            _state["saved"] = _pin(xla_workers())
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _restore(_state["saved"])
                _state["saved"] = []
