"""QPO: DPO-family preference training on (prompt, chosen, rejected) with the generator's pre-query template as
the prompt and improved (chosen) vs original (rejected) questions as completions (SCALEQUEST.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sq_jax.configlib import to_dict
from sq_jax.data.pairs import PreferencePairs, tokenize_pairs
from sq_jax.data.sources import DataError, Record
from sq_jax.models.tokenizer import encode_prompt
from sq_jax.models.transformer import Transformer
from sq_jax.prompts.formats import PromptFormat, prompt_format_mismatch
from sq_jax.train.config import DataSection, PreferenceSection, TrainConfig
from sq_jax.train.losses import completion_logps, preference_losses
from sq_jax.train.step import LossFn


def pair_logps(model: Transformer, batch: dict[str, jax.Array], max_pairs: int) -> jax.Array:
    """Summed completion log-probs of every pair slot of every row: [rows, max_pairs, 2] (chosen, rejected)."""
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits
    per_segment = completion_logps(logits, batch["tokens"], batch["segment_ids"], batch["loss_mask"], 2 * max_pairs)
    return per_segment.reshape(per_segment.shape[0], max_pairs, 2)


def make_preference_loss(pref: PreferenceSection) -> LossFn:
    max_pairs = pref.max_pairs_per_row

    def loss(model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        policy = pair_logps(model, batch, max_pairs)
        if "reference_logps" in batch:
            reference = batch["reference_logps"]
        elif pref.reference_free:
            reference = jnp.zeros_like(policy)
        else:
            raise ValueError("the batch has no reference_logps; precompute them or use an online reference")
        losses, metrics = preference_losses(
            policy[..., 0], policy[..., 1], reference[..., 0], reference[..., 1], beta=pref.beta,
            loss_type=pref.loss_type, label_smoothing=pref.label_smoothing, reference_free=pref.reference_free,
        )
        valid = (batch["example_index"] >= 0).astype(jnp.float32)  # empty slots of a row add nothing
        stats = {name: jnp.sum(value * valid) for name, value in metrics.items()}
        stats["count"] = jnp.sum(valid)
        stats["tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
        return jnp.sum(losses * valid), stats

    return loss


class QPOTask:
    """Pairs {prompt, chosen, rejected}; a missing prompt means the model's pre-query template (the paper's)."""

    name = "qpo"
    fields = ("chosen", "rejected")

    def __init__(self, tokenizer: Any, fmt: PromptFormat, cfg: TrainConfig):
        self.tokenizer, self.fmt, self.cfg = tokenizer, fmt, cfg
        self.pref = cfg.preference
        self.needs_reference = not self.pref.reference_free
        self.loss_fn = make_preference_loss(self.pref)

    @classmethod
    def row_length(cls, data: DataSection) -> int:
        return data.row_length or 2 * data.max_length  # a pair's two sequences share a row

    @classmethod
    def resume_sections(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {"preference": to_dict(cfg.preference)}

    def step_counts(self, count: float) -> dict[str, float]:
        return {"pairs": count}

    def _completion(self, text: str) -> list[int]:
        # The generator ends a question with its end-of-question text (as in QFT); the pairs must too, or QPO
        # would teach it to stop differently than it was taught.
        text = str(text).strip()
        if not text.endswith(self.fmt.query_end):
            text += self.fmt.query_end
        return encode_prompt(self.tokenizer, text)

    def prompt_of(self, data: dict[str, Any]) -> str:
        prompt = data.get("prompt")
        return self.fmt.pre_query_template if prompt is None else str(prompt)

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
        prompt = encode_prompt(self.tokenizer, self.prompt_of(data))
        return prompt, self._completion(data["chosen"]), self._completion(data["rejected"])

    def build_examples(self, records: Sequence[Record]) -> PreferencePairs:
        for r in records:
            problem = prompt_format_mismatch(self.prompt_of(r.data), self.fmt)
            if problem:
                raise DataError(f"{r.source}:{r.line}: field 'prompt': {problem}")
        d = self.cfg.data
        return tokenize_pairs(records, self.encode, d.max_length, d.overlong, self.pref.max_pairs_per_row,
                              self.row_length(d))

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        keys = ("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin",
                "policy_chosen_logp", "policy_rejected_logp", "tokens")
        return {**{k: means[k] for k in keys}, "pairs": means["count"]}
