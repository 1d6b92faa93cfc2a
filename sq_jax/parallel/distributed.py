"""Multi-host start-up: `jax.distributed.initialize()` when configured, before any other JAX call."""

from __future__ import annotations

import jax


def maybe_initialize(
    enabled: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """On TPU pods the arguments come from the environment; pass them explicitly for CPU/GPU clusters."""
    if not enabled or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
