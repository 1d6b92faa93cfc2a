"""`generate(model, prompts, ...)`: one-call decoding for smoke runs, the CLI and tests, on the real engine.

An engine sized for exactly these prompts runs them through the raw loop; there is one decode path in sq-jax.
"""

from __future__ import annotations

from collections.abc import Sequence

from sq_jax.models.transformer import Transformer
from sq_jax.sampling.engine import Engine
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """New tokens for each prompt (stop token excluded); prompt i samples with seed `seed + i`."""
    if not prompts:
        return []
    longest = max(len(p) for p in prompts)
    prefill = -(-max(longest, 1) // 16) * 16
    engine = Engine(model, stop_ids=stop_ids, max_slots=len(prompts), max_cache_length=prefill + max_new_tokens,
                    max_prefill_length=prefill, decode_steps=min(8, max_new_tokens))
    requests = [Request(p, SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed + i))
                for i, p in enumerate(prompts)]
    completions = run_loop(engine, requests)
    failed = [c for c in completions if c.finish_reason == "error"]
    if failed:
        raise ValueError(failed[0].error)
    return [c.token_ids for c in completions]
