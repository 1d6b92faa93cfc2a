"""QFT and SFT: next-token training that differs only in what text is built and which tokens carry loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sq_jax.data.batching import TokenizedExamples, tokenize_records
from sq_jax.data.sources import DataError, Record
from sq_jax.models.tokenizer import encode_prompt
from sq_jax.prompts.formats import PromptFormat
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

    @classmethod
    def row_length(cls, data: DataSection) -> int:
        return data.row_length or data.max_length

    @classmethod
    def resume_sections(cls, cfg: TrainConfig) -> dict[str, Any]:
        return {}  # the loop's sections say it all

    def step_counts(self, count: float) -> dict[str, float]:
        return {}  # the count is the tokens, logged already

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
    """Supervised fine-tuning, loss on response + end-of-turn only. A record is either {query, response}, rendered
    with the solver prompt, or {messages, response}: OpenAI-style chat messages rendered with the family's chat
    template plus the generation prompt, exactly as `LocalBackend` renders a request, so a model trained here sees
    at use the very bytes it was trained on (how the tiny optimiser learns its reply format)."""

    name = "sft"
    # `read_records` checks only `response`; query-vs-messages is an either/or it cannot express, checked below.
    fields = ("response",)

    def build_examples(self, records: Sequence[Record]) -> TokenizedExamples:
        for record in records:  # every record's prompt is checked first, so an error names its source:line
            self._prompt(record.data, record.where)
        return super().build_examples(records)

    def _prompt(self, data: dict[str, Any], where: str) -> str:
        has_query, has_messages = data.get("query") is not None, data.get("messages") is not None
        if has_query == has_messages:
            what = "both 'query' and 'messages' are set" if has_query else "required field 'query' is missing"
            raise DataError(f"{where}: {what}; an SFT record needs 'response' and exactly one of 'query' (a "
                            f"question for the solver prompt) or 'messages' (chat turns); record has fields "
                            f"{sorted(data)}")
        if has_query:
            return self.fmt.solver_prompt(str(data["query"]).strip())
        messages = data["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects, got "
                            f"{type(messages).__name__} {str(messages)[:80]!r}")
        if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            raise DataError(f"{where}: 'messages' ends with an assistant turn; the reply to learn belongs in "
                            "'response', the messages stop before it")
        try:
            return self.fmt.chat(messages, add_generation_prompt=True)
        except ValueError as e:  # the format names the bad message; this adds the record
            raise DataError(f"{where}: bad 'messages': {e}") from None

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int]]:
        prompt = encode_prompt(self.tokenizer, self._prompt(data, str(data.get("id", "SFT record"))))
        response = encode_prompt(self.tokenizer, self.fmt.response_text(str(data["response"]).strip()))
        return prompt + response, [0] * len(prompt) + [1] * len(response)
