"""Multi-host training: joining the processes of one run with `jax.distributed`.

Every process runs the same `jaxface train` command with its own `--process-id`; process 0
also hosts the coordinator. After `initialize`, `jax.devices()` lists every process's
devices, so `train`'s data mesh spans them all: each process loads only its rows of the
global batch (`jaxface.data`, `devices.local_rows`) and the step is the same global-view
program as on one machine. Process 0 alone writes train.json, metrics.csv and the overlays;
checkpoints and the exported network are saved by orbax with every process taking part.
The run folder must be on a filesystem that all processes see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import threading

import jax
import numpy as np

# Slack for jax's own deadline: our watchdog fires first and says what happened in one line
# (XLA ends a process that misses its deadline with an abort and a C++ stack trace).
_GRACE_S = 30


class ClusterError(RuntimeError):
    """This process could not join the run's processes (`jaxface train` exits with status 2)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of one run.

    coordinator: HOST:PORT where process 0 listens and the others connect
    num_processes: how many processes take part (each with its own devices)
    process_id: this process, 0 ... num_processes - 1
    timeout_s: how long to wait for all processes to join
    """

    coordinator: str
    num_processes: int
    process_id: int
    timeout_s: int = 300

    def __post_init__(self):
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {self.coordinator!r}")
        if self.num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"--process-id must be in 0 ... {self.num_processes - 1} (--num-processes "
                             f"{self.num_processes}), got {self.process_id}")
        if not self.timeout_s > 0:
            raise ValueError(f"--coordinator-timeout must be positive, got {self.timeout_s}")

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.coordinator.rpartition(":")
        return host.strip("[]"), int(port)


def initialize(cluster: Cluster) -> None:
    """Join the run's processes; call before any other jax use (no computation may have run).

    Enables CPU collectives (gloo) so CPU-only processes can all-reduce; GPUs use NCCL
    regardless. A process that has not joined after `cluster.timeout_s` prints one line
    saying why (coordinator unreachable, or not every process came) and exits with status 2.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    joined = threading.Event()

    def give_up():
        if not joined.is_set():
            print(f"jaxface train: error: {_join_failure(cluster)}", file=sys.stderr, flush=True)
            os._exit(2)  # the main thread is blocked inside XLA's connect; nothing to clean up yet

    watchdog = threading.Timer(cluster.timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id,
                                   initialization_timeout=cluster.timeout_s + _GRACE_S)
    except Exception as e:  # e.g. process 0 cannot listen: jax's error is a bare "Failed to start RPC server"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (f"; is port {cluster.address[1]} free on this machine?" if cluster.process_id == 0 else "")
        raise ClusterError(f"cannot join the run's processes at {cluster.coordinator} as process "
                           f"{cluster.process_id} of {cluster.num_processes}: {first}{hint}") from None
    finally:
        joined.set()
        watchdog.cancel()


def _join_failure(cluster: Cluster) -> str:
    who = f"process {cluster.process_id} of {cluster.num_processes}"
    if cluster.process_id != 0:
        try:
            socket.create_connection(cluster.address, timeout=2.0).close()
        except OSError as e:
            return (f"cannot reach the coordinator {cluster.coordinator} within {cluster.timeout_s} s ({who}; "
                    f"{e.strerror or e}): start process 0 with the same --coordinator, check the host, port and "
                    "firewall, or raise --coordinator-timeout")
    return (f"not all {cluster.num_processes} processes joined the coordinator {cluster.coordinator} within "
            f"{cluster.timeout_s} s ({who}): start every --process-id 0 ... {cluster.num_processes - 1} with the "
            "same --coordinator and --num-processes, or raise --coordinator-timeout")


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0; always true on one process)."""
    return jax.process_index() == 0


def check_same(settings: dict) -> None:
    """Refuse to start unless every process passes the same JSON-able `settings` (with
    several processes; one comparison of their digests)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).digest()
    mine = np.frombuffer(digest, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(f"the processes of this run were started with different settings (process "
                         f"{differ[0]} differs from process 0); run the same command on every machine, only "
                         "--process-id changes")
