"""QFT and SFT: next-token training that differs only in what text is built and which tokens carry loss."""

from __future__ import annotations

from typing import Any

from sq_jax.models.tokenizer import PromptFormat, encode_prompt


class QFTTask:
    """Question fine-tuning: the generator's pre-query template + question + end-of-turn, loss on every token."""

    name = "qft"
    fields = ("question",)

    def __init__(self, tokenizer: Any, fmt: PromptFormat):
        self.tokenizer, self.fmt = tokenizer, fmt

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int]]:
        ids = encode_prompt(self.tokenizer, self.fmt.qft_text(str(data["question"]).strip()))
        return ids, [1] * len(ids)


class SFTTask:
    """Supervised fine-tuning on (query, response): the solver prompt, loss on response + end-of-turn only."""

    name = "sft"
    fields = ("query", "response")

    def __init__(self, tokenizer: Any, fmt: PromptFormat):
        self.tokenizer, self.fmt = tokenizer, fmt

    def encode(self, data: dict[str, Any]) -> tuple[list[int], list[int]]:
        prompt = encode_prompt(self.tokenizer, self.fmt.solver_prompt(str(data["query"]).strip()))
        response = encode_prompt(self.tokenizer, str(data["response"]).strip() + self.fmt.turn_end)
        return prompt + response, [0] * len(prompt) + [1] * len(response)


TASKS = {"qft": QFTTask, "sft": SFTTask}
