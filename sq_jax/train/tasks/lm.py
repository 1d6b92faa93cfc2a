"""QFT and SFT: next-token training that differs only in what text is built and which tokens carry loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sq_jax.data.pipeline import TokenizedExamples, tokenize_records
from sq_jax.data.sources import Record
from sq_jax.models.tokenizer import PromptFormat, encode_prompt
from sq_jax.train.config import DataSection, TrainConfig
from sq_jax.train.step import lm_loss


class LMTask:
    """Shared by the next-token tasks: sequences packed several to a row, mean token cross-entropy. A subclass
    defines `encode(data) -> (tokens, loss_mask)`."""

    name = "lm"
    fields: tuple[str, ...] = ()
    needs_reference = False

    def __init__(self, tokenizer: Any, fmt: PromptFormat, cfg: TrainConfig):
        self.tokenizer, self.fmt, self.cfg = tokenizer, fmt, cfg
        self.loss_fn = lm_loss

    def row_length(self, data: DataSection) -> int:
        return data.row_length or data.max_length

    def build_examples(self, records: Sequence[Record]) -> TokenizedExamples:
        d = self.cfg.data
        return tokenize_records(records, self.encode, d.max_length, d.overlong)

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return {"loss": means["loss"], "perplexity": math.exp(min(means["loss"], 50.0)), "tokens": means["tokens"]}


class QFTTask(LMTask):
    """Question fine-tuning: the generator's pre-query template + question + end-of-turn, loss on every token."""

    name = "qft"
    fields = ("question",)

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int]]:
        ids = encode_prompt(self.tokenizer, self.fmt.qft_text(str(data["question"]).strip()))
        return ids, [1] * len(ids)


class SFTTask(LMTask):
    """Supervised fine-tuning on (query, response): the solver prompt, loss on response + end-of-turn only."""

    name = "sft"
    fields = ("query", "response")

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int]]:
        prompt = encode_prompt(self.tokenizer, self.fmt.solver_prompt(str(data["query"]).strip()))
        response = encode_prompt(self.tokenizer, str(data["response"]).strip() + self.fmt.turn_end)
        return prompt + response, [0] * len(prompt) + [1] * len(response)
