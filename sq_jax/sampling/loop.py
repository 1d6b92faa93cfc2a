"""The raw engine loop: continuous batching on one thread, no JetStream. Host work overlaps the next step."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from sq_jax.sampling.engine import Engine
from sq_jax.sampling.sampling import SamplingParams


@dataclasses.dataclass
class Request:
    token_ids: Sequence[int]
    sampling: SamplingParams
    id: object = None


@dataclasses.dataclass
class Completion:
    id: object
    token_ids: list[int]
    finish_reason: str  # "stop" (stop token), "length" (max_tokens), "cache" (cache full), "error"
    error: str | None = None


@dataclasses.dataclass
class LoopStats:
    steps: int = 0
    generated_tokens: int = 0
    device_wait_s: float = 0.0
    host_s: float = 0.0


def run_loop(
    engine: Engine,
    requests: Iterable[Request],
    *,
    on_complete: Callable[[Completion], None] | None = None,
    stats: LoopStats | None = None,
) -> list[Completion]:
    """Generate every request; completions in request order (also streamed to `on_complete` as they finish)."""
    pending = collections.deque(enumerate(requests))
    order: dict[int, Completion] = {}
    stats = stats or LoopStats()
    state = engine.init_decode_state()
    free = list(range(engine.max_slots))[::-1]
    live: dict[int, tuple[int, Request, list[int]]] = {}  # slot -> (request index, request, tokens so far)
    inflight: collections.deque = collections.deque()  # (result array, slot -> request index at dispatch)
    steps = engine.decode_steps

    def finish(slot: int, reason: str) -> None:
        index, request, tokens = live.pop(slot)
        free.append(slot)
        done = Completion(request.id if request.id is not None else index, tokens, reason)
        order[index] = done
        if on_complete is not None:
            on_complete(done)

    def process(result: np.ndarray, owners: dict[int, int]) -> None:
        for slot, owner in owners.items():
            if slot not in live or live[slot][0] != owner:
                continue  # finished in an earlier block
            _, request, tokens = live[slot]
            reason = None
            for j in range(steps):
                token, valid = int(result[slot, j]), bool(result[slot, steps + j])
                if not valid:
                    reason = "length" if len(tokens) >= request.sampling.max_tokens else "cache"
                    break
                if token in engine.stop_ids:
                    reason = "stop"
                    break
                tokens.append(token)
                stats.generated_tokens += 1
                if len(tokens) >= request.sampling.max_tokens:
                    reason = "length"
                    break
            if reason is not None:
                finish(slot, reason)

    while pending or live:
        t0 = time.perf_counter()
        batch, slots = [], []
        while pending and free:
            index, request = pending.popleft()
            try:
                ids = engine.check_request(request.token_ids, request.sampling)
            except ValueError as e:
                done = Completion(request.id if request.id is not None else index, [], "error", str(e))
                order[index] = done
                if on_complete is not None:
                    on_complete(done)
                continue
            slot = free.pop()
            batch.append((ids, request.sampling))
            slots.append(slot)
            live[slot] = (index, request, [])
        if batch:
            state = engine.insert_many(batch, slots, state)
        if not live:
            break
        if inflight and all(
            len(tokens) + steps * len(inflight) >= request.sampling.max_tokens for _, request, tokens in live.values()
        ):
            # The blocks in flight already reach every live request's max_tokens: another would be wasted work.
            result, owners = inflight.popleft()
            process(np.asarray(result), owners)
            continue
        state, result = engine.decode_block(state)
        result.copy_to_host_async()
        inflight.append((result, {slot: entry[0] for slot, entry in live.items()}))
        stats.steps += steps
        stats.host_s += time.perf_counter() - t0
        # Keep one block in flight: the host reads block n while the device computes block n + 1, also when
        # nothing is pending (reading each block before dispatching the next left the device idle during the
        # host's turn); the check above stops blocks past every request's max_tokens.
        if len(inflight) > 1:
            t1 = time.perf_counter()
            result, owners = inflight.popleft()
            host = np.asarray(result)
            stats.device_wait_s += time.perf_counter() - t1
            t2 = time.perf_counter()
            process(host, owners)
            stats.host_s += time.perf_counter() - t2
    while inflight:
        result, owners = inflight.popleft()
        process(np.asarray(result), owners)
    return [order[i] for i in sorted(order)]
