"""jaxface.cpu: XLA's workers found by name, pinned one per core inside a block only."""

from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import cpu

needs_pinning = pytest.mark.skipif(not cpu.can_pin(), reason="needs Linux thread affinity and two cores")


def _affinities(tids):
    return [os.sched_getaffinity(t) for t in tids]


@pytest.fixture
def workers():
    """XLA's worker threads, once JAX's CPU backend has started."""
    jnp.ones(3).block_until_ready()
    return cpu.xla_workers()


@needs_pinning
def test_xla_workers_are_the_threads_that_run_a_parallel_product():
    f = jax.jit(lambda a: a @ a)
    a = jnp.ones((1024, 1024))
    f(a).block_until_ready()
    workers = cpu.xla_workers()
    assert len(workers) >= 2 and threading.get_native_id() not in workers

    def ran():  # ns each thread of this process has run
        out = {}
        for t in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{t}/schedstat") as fh:
                    out[int(t)] = int(fh.read().split()[0])
            except OSError:
                pass
        return out

    before = ran()
    for _ in range(10):
        f(a).block_until_ready()
    after = ran()
    spent = {t: after[t] - before.get(t, 0) for t in after}
    # XLA's executing thread takes a share of a product (about half here, with or without other
    # load); which worker takes which task varies. The named threads must do a real share of it.
    assert sum(spent[t] for t in workers if t in spent) > 0.25 * sum(spent.values())


@needs_pinning
def test_pinned_gives_each_worker_its_own_core_and_restores_after(workers):
    cores = sorted(os.sched_getaffinity(0))
    before = _affinities(workers)
    with cpu.pinned():
        inside = _affinities(workers)
        assert inside == [{cores[i % len(cores)]} for i in range(len(workers))]
        x = jax.jit(lambda a: jnp.tanh(a @ a))(jnp.full((256, 256), 0.01))
    assert _affinities(workers) == before
    np.testing.assert_array_equal(np.asarray(x), np.asarray(jax.jit(lambda a: jnp.tanh(a @ a))(jnp.full((256, 256), 0.01))))

    with pytest.raises(KeyError):
        with cpu.pinned():
            raise KeyError("x")
    assert _affinities(workers) == before
    with cpu.pinned(enabled=False):
        assert _affinities(workers) == before


@needs_pinning
def test_overlapping_blocks_from_two_threads_restore_once_at_the_last_exit(workers):
    before = _affinities(workers)
    entered, release = threading.Event(), threading.Event()

    def other():
        with cpu.pinned():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    with cpu.pinned():
        pinned_inside = _affinities(workers)
    assert _affinities(workers) == pinned_inside  # the other thread's block is still open
    release.set()
    t.join()
    assert all(len(a) == 1 for a in pinned_inside)
    assert _affinities(workers) == before


@needs_pinning
def test_pinning_skips_threads_that_are_gone(workers):
    before = _affinities(workers)
    saved = cpu._pin([2**22 + 12345, *workers])  # no such thread first
    try:
        assert [tid for tid, _ in saved] == list(workers)
        assert all(len(a) == 1 for a in _affinities(workers))
    finally:
        cpu._restore(saved)
    assert _affinities(workers) == before
