"""Multi-host start-up: `jax.distributed.initialize()` from the config or the environment, before any JAX call.

On Cloud TPU VMs JAX finds the coordinator and this host's index by itself, so `SQ_JAX_DISTRIBUTED=1` (what
`tpu/run.sh` exports) is all it takes. Elsewhere (GPU clusters, two processes on one CPU box in our tests) the
coordinator, process count and index come from `SQ_JAX_COORDINATOR`, `SQ_JAX_NUM_PROCESSES`, `SQ_JAX_PROCESS_ID`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

__all__ = ["DistributedSettings", "initialize", "maybe_initialize", "settings_from_env"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    coordinator_address: str | None = None  # host:port of process 0; None: JAX detects it (TPU VMs, SLURM)
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300  # how long to wait for the coordinator and for every process to join
    # CPU collectives between processes need an implementation; gloo ships with jaxlib.
    cpu_collectives: str = "gloo"

    def __post_init__(self) -> None:
        explicit = (self.coordinator_address, self.num_processes, self.process_id)
        if any(v is not None for v in explicit) and any(v is None for v in explicit):
            raise ValueError("distributed: coordinator address, number of processes and process id go together; "
                             f"got {self.coordinator_address!r}, {self.num_processes!r}, {self.process_id!r}")
        if self.num_processes is not None and not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"distributed: process id {self.process_id} is outside 0..{self.num_processes - 1}")
        if self.coordinator_address is not None and not _split_address(self.coordinator_address):
            raise ValueError(f"distributed: coordinator address {self.coordinator_address!r} is not host:port")
        if self.timeout_s < 1:
            raise ValueError(f"distributed: timeout must be >= 1 s, got {self.timeout_s}")


def _split_address(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def settings_from_env(env: Mapping[str, str] = os.environ) -> DistributedSettings | None:
    """The settings `SQ_JAX_DISTRIBUTED` and its companions ask for, or None when it is unset or false."""
    flag = env.get("SQ_JAX_DISTRIBUTED", "").strip().lower()
    if flag in _FALSE:
        return None
    if flag not in _TRUE:
        raise ValueError(f"environment variable SQ_JAX_DISTRIBUTED={flag!r}: expected 1/true or 0/false")
    timeout = _env_int(env, "SQ_JAX_INIT_TIMEOUT")
    return DistributedSettings(
        coordinator_address=env.get("SQ_JAX_COORDINATOR") or None,
        num_processes=_env_int(env, "SQ_JAX_NUM_PROCESSES"),
        process_id=_env_int(env, "SQ_JAX_PROCESS_ID"),
        **({} if timeout is None else {"timeout_s": timeout}),
    )


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Connect to the coordinator's port until it answers or `timeout_s` passes.

    JAX's own client aborts the whole process (no Python exception, just a C++ stack trace) when the coordinator
    cannot be reached; probing first turns that into an error that says what to check.
    """
    host, port = _split_address(address)
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise TimeoutError(f"distributed: the coordinator {address} did not answer within {timeout_s:g} s ({last}); "
                       "is process 0 running, and are the address and port right and reachable from this host?")


def initialize(settings: DistributedSettings) -> None:
    """Join the multi-process JAX runtime (idempotent). Must run before any JAX computation."""
    if jax.distributed.is_initialized():
        return
    if settings.cpu_collectives:  # only the CPU backend reads it; harmless on TPU and GPU hosts
        jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)
    if settings.coordinator_address is not None and settings.process_id != 0:
        _wait_for_coordinator(settings.coordinator_address, settings.timeout_s)
    log.info("joining %s processes through %s (this is process %s; waiting up to %d s)",
             settings.num_processes or "all", settings.coordinator_address or "the detected coordinator",
             settings.process_id if settings.process_id is not None else "auto", settings.timeout_s)
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
        process_id=settings.process_id, initialization_timeout=settings.timeout_s,
    )


def maybe_initialize(
    enabled: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """The train config's `mesh.distributed` switch; the environment (`settings_from_env`) fills what it omits."""
    if not enabled:
        return
    env = settings_from_env() or DistributedSettings()
    explicit = DistributedSettings(coordinator_address, num_processes, process_id, env.timeout_s)
    initialize(explicit if coordinator_address is not None else env)


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_lead() -> bool:
    """True in the process that writes shared files (manifests, reports, records): process 0."""
    return jax.process_index() == 0


def failed_processes(ok: bool) -> list[int]:
    """A barrier that also shares how each process fared: the indices of those that passed ok=False.

    A process that hit an error still reaches this call, so the others stop too instead of waiting forever at
    the next barrier."""
    if jax.process_count() == 1:
        return [] if ok else [0]
    flags = np.asarray(multihost_utils.process_allgather(np.asarray([int(ok)]))).reshape(-1)
    return [i for i, flag in enumerate(flags) if not flag]
