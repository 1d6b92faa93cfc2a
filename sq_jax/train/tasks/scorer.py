"""Scalar scorer training (the difficulty scorer of SCALEQUEST.md section 4): a score head on the solver prompt of
a question regresses a target (the question's fail rate) with mean squared error, read at the last token."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sq_jax.data.packing import assemble_row
from sq_jax.data.sources import DataError, Record
from sq_jax.models.tokenizer import encode_prompt
from sq_jax.models.transformer import Transformer
from sq_jax.prompts.formats import PromptFormat
from sq_jax.train.config import DataSection, TrainConfig
from sq_jax.train.losses import segment_last_values


@dataclasses.dataclass
class ScoredExamples:
    """Sequences with one float target each, packed up to `max_items` per row (static target slots)."""

    tokens: list[np.ndarray]
    targets: list[float]
    ids: list[str]
    stats: dict[str, int]
    max_items: int
    batch_keys: tuple[str, ...] = ("tokens", "positions", "segment_ids", "example_index", "targets")

    def __len__(self) -> int:
        return len(self.tokens)

    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def assemble(self, row: Sequence[int], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
        batch = assemble_row([(self.tokens[i], np.zeros(len(self.tokens[i]), np.int32)) for i in row], seq_len, pad_id)
        index = np.full(self.max_items, -1, np.int64)
        index[: len(row)] = row
        targets = np.zeros(self.max_items, np.float32)
        targets[: len(row)] = [self.targets[i] for i in row]
        batch.update(example_index=index, targets=targets)
        return batch


def score_text(fmt: PromptFormat, question: str) -> str:
    """What the scorer reads: the question as the solver sees it, so it judges the solver's difficulty."""
    return fmt.solver_prompt(question.strip())


class ScorerTask:
    """Records {question, score}; `model.head: score` loads the checkpoint with a fresh scalar head."""

    name = "scorer"
    fields = ("question", "score")
    needs_reference = False
    max_items = 16

    def __init__(self, tokenizer: Any, fmt: PromptFormat, cfg: TrainConfig):
        self.tokenizer, self.fmt, self.cfg = tokenizer, fmt, cfg
        if cfg.model.head != "score":
            raise ValueError("task scorer needs model.head: score (a scalar head on the language model)")
        self.loss_fn = self._loss

    @classmethod
    def row_length(cls, data: DataSection) -> int:
        return data.row_length or data.max_length

    @classmethod
    def resume_sections(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {}  # the score head is model.head, in the loop's model section

    def step_counts(self, count: float) -> dict[str, float]:
        return {}

    def build_examples(self, records: Sequence[Record]) -> ScoredExamples:
        d = self.cfg.data
        out = ScoredExamples([], [], [], {"records": len(records), "truncated": 0, "dropped_overlong": 0},
                             self.max_items)
        for r in records:
            try:
                target = float(r.data["score"])
            except (TypeError, ValueError):
                raise DataError(f"{r.source}:{r.line}: field 'score' is not a number: {r.data['score']!r}") from None
            ids = encode_prompt(self.tokenizer, score_text(self.fmt, str(r.data["question"])))
            if len(ids) > d.max_length:
                if d.overlong == "drop":
                    out.stats["dropped_overlong"] += 1
                    continue
                # Keep the end: the score is read at the last token, after the whole prompt.
                out.stats["truncated"] += 1
                ids = ids[-d.max_length:]
            out.tokens.append(np.asarray(ids, np.int32))
            out.targets.append(target)
            out.ids.append(str(r.data.get("id", f"{r.source}:{r.line}")))
        out.stats["examples"] = len(out)
        return out

    def _loss(self, model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        per_token = model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits[..., 0]
        predictions = segment_last_values(per_token, batch["segment_ids"], self.max_items)
        valid = (batch["example_index"] >= 0).astype(jnp.float32)
        error = (predictions - batch["targets"]) * valid
        stats = {"count": jnp.sum(valid), "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
                 "mae": jnp.sum(jnp.abs(error))}
        return jnp.sum(error**2), stats

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return {"loss": means["loss"], "mae": means["mae"], "examples": means["count"], "tokens": means["tokens"]}
