"""`sq-jax eval --base-url URL`: the answers come from any OpenAI-compatible server (`sq-jax serve`, vLLM, ...).

Each question is one chat request (the solver instruction in the user turn, as `PromptFormat.solver_prompt` puts
it; the server applies its model's chat template) with `n` = samples, seeded per question id so reruns agree.
Replies are not kept between runs: a rerun asks again (the engine path resumes from its shards instead).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sq_jax.prompts.solver import SOLVER_INSTRUCTION
from sq_jax.sampling.generate_job import request_seed


def remote_outputs(cfg: Any, rows: list[dict[str, str]], concurrency: int = 16) -> dict[str, list[dict[str, Any]]]:
    """Outputs per prompt id, in sample order, from `cfg.base_url` serving `cfg.model` (an `EvalConfig`)."""
    import openai  # here: only this path needs the client

    # A server started without a key takes any; the client insists on one.
    client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                           max_retries=3, timeout=600)

    def one(row: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        try:
            reply = client.chat.completions.create(
                model=cfg.model, messages=[{"role": "user", "content": f"{row['question']}\n{SOLVER_INSTRUCTION}"}],
                n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                seed=request_seed(cfg.seed, row["id"]) & 0x3FFFFFFF)  # room for seed + i, i < n
        except openai.OpenAIError as e:
            raise RuntimeError(f"eval: {cfg.base_url} failed on question {row['id']!r}: {e}") from e
        choices = sorted(reply.choices, key=lambda c: c.index)
        return row["id"], [{"prompt_id": row["id"], "sample": c.index, "output": c.message.content or "",
                            "finish_reason": c.finish_reason} for c in choices]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return dict(pool.map(one, rows))
