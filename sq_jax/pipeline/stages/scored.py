"""Stages that read a score-head model: the difficulty filter (predicted fail rate) and the reward ranking."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from sq_jax.data.dataset import read_json
from sq_jax.eval.equivalence import normalize_answer
from sq_jax.models.tokenizer import detect_prompt_format, load_tokenizer
from sq_jax.pipeline.score_job import load_scores, score_parts
from sq_jax.pipeline.scoring import PackedScorer, describe, load_scorer
from sq_jax.pipeline.stages.base import STAGE_MANIFEST, Kind, StageContext
from sq_jax.train.tasks.scorer import score_text


@dataclasses.dataclass(frozen=True)
class DifficultyConfig:
    drop_easiest: float = 0.2  # share of questions with the lowest predicted fail rate to drop
    model: str | None = None  # default: the `scorer` input's export
    head: str | None = None  # "score": put a fresh head on a causal LM (smoke runs and tests only: it scores noise)
    dtype: str = "bfloat16"
    batch_size: int = 64  # packed rows of max_length tokens per forward call
    max_length: int = 512

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_easiest < 1.0:
            raise ValueError(f"drop_easiest must be in [0, 1), got {self.drop_easiest}")


TOKENIZE_BATCH = 256  # texts per tokenizer call


def encode_texts(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    """Token ids (no special tokens) of each text, as int32 arrays, tokenised `TOKENIZE_BATCH` texts a call.

    A fast tokenizer's batch output keeps every text's Encoding (ids, offsets, masks, token strings) until the call
    returns: ~100 MiB for a 4096-row chunk of 450-token responses. In small batches only 256 are alive at once, and
    the ids are the same (no padding, each text encoded alone)."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        ids = tokenizer(texts[start : start + TOKENIZE_BATCH], add_special_tokens=False)["input_ids"]
        out += [np.asarray(t, np.int32) for t in ids]
    return out


def _score_input(ctx: StageContext, role: str, encode: Any, model: Any, batch_size: int, max_length: int,
                 ) -> tuple[list[Any], dict[str, Any]]:
    """Score every part of input `role` (this process's share, resumable; see score_job); (parts, stats)."""
    parts = ctx.input_parts(role)
    upstream = {p["name"]: p["rows"] for p in read_json(ctx.inputs[role] / STAGE_MANIFEST).get("parts", [])}
    rows = [upstream[p.name] for p in parts] if all(p.name in upstream for p in parts) else None
    scorer = PackedScorer(model, rows=batch_size, width=max_length, max_length=max_length)
    stats = score_parts(parts, ctx.dir / "scores", encode, scorer, collective=ctx.collective, part_rows=rows,
                        desc=ctx.name)
    return parts, stats


def difficulty(ctx: StageContext, cfg: DifficultyConfig) -> dict[str, Any]:
    """Score every question with the trained difficulty scorer (predicted fail rate) and drop the easiest share.

    Every process scores its share of the input's parts (resumable); process 0 then reads the scores (4 bytes a
    question), finds the cut and streams the questions once more into kept and dropped."""
    path = ctx.model("scorer", cfg.model)
    model = load_scorer(path, head=cfg.head, dtype=cfg.dtype)
    model.config.check_length(cfg.max_length, f"stages.{ctx.name}.config.max_length")
    tokenizer = load_tokenizer(path)
    fmt = detect_prompt_format(tokenizer)

    def encode(rows: list[dict[str, Any]]) -> list[np.ndarray]:
        return encode_texts(tokenizer, [score_text(fmt, r["question"]) for r in rows])

    parts, stats = _score_input(ctx, "questions", encode, model, cfg.batch_size, cfg.max_length)
    if not ctx.writer:
        return stats
    scores = np.concatenate([p["scores"] for p in load_scores(ctx.dir / "scores", len(parts))] or [np.zeros(0)])
    cut = int(len(scores) * cfg.drop_easiest)
    easiest = np.zeros(len(scores), bool)
    easiest[np.argsort(scores, kind="stable")[:cut]] = True
    with ctx.record_writer() as kept, ctx.dropped_writer() as dropped:
        for i, r in enumerate(ctx.iter_records("questions")):
            (dropped if easiest[i] else kept).write({**r, "difficulty": float(scores[i])})
    threshold = float(scores[easiest].max()) if cut else float("nan")
    return {**stats, "dropped_easy": dropped.rows, "threshold": threshold, "scores": describe(scores),
            "input": len(scores), "kept": kept.rows, "dropped": dropped.rows}


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    model: str | None = None  # a reward model (score head), e.g. internlm/internlm2-7b-reward; or the `model` input
    head: str | None = None  # "score": put a fresh head on a causal LM (smoke runs only: it scores noise)
    dtype: str = "bfloat16"
    batch_size: int = 32  # packed rows of max_length tokens per forward call
    max_length: int = 4096
    # Real InternLM2 checkpoints ship their tokenizer as Python code in the repository; it runs only when allowed.
    trust_remote_code: bool = False


def reward_text(tokenizer: Any, query: str, response: str) -> str:
    """One (question, response) as internlm2-7b-reward's `get_score` renders it: the chat template as text."""
    return tokenizer.apply_chat_template([{"role": "user", "content": query},
                                          {"role": "assistant", "content": response}],
                                         tokenize=False, add_generation_prompt=False)


def reward_inputs(tokenizer: Any, query: str, response: str) -> list[int]:
    """Token ids of one (question, response) as `get_score` builds them: `reward_text` encoded without special
    tokens (the template writes its own BOS). The pooling token is appended by the scorer (`pooled_sequence`)."""
    return list(tokenizer.encode(reward_text(tokenizer, query, response), add_special_tokens=False))


def _majority(answers: list[str | None]) -> tuple[str | None, float]:
    keys = [normalize_answer(a) if a else None for a in answers]
    counts = collections.Counter(k for k in keys if k)
    if not counts:
        return None, 0.0
    key, votes = counts.most_common(1)[0]
    return answers[keys.index(key)], votes / len(answers)


def _best_of(members: list[tuple[dict[str, Any], float]]) -> dict[str, Any]:
    """One question's best response (ties: the earliest), with every sample's answer and the majority's share."""
    top, score = max(members, key=lambda m: m[1])  # max keeps the first of equal scores
    answers = [r.get("answer") for r, _ in members]
    majority, share = _majority(answers)
    return {"id": top["question_id"], "query": top["query"], "response": top["response"], "reward": float(score),
            "answer": top.get("answer"), "answers": answers, "majority_answer": majority, "majority_share": share,
            "num_responses": len(members), "response_id": top["id"]}


def _question_groups(rows: Iterator[tuple[dict[str, Any], float]]) -> Iterator[list[tuple[dict[str, Any], float]]]:
    """Consecutive rows of one question (the respond stage writes a question's n responses together)."""
    finished: set[int] = set()  # hashes of the questions already ranked: 8 bytes of key a question, not its text
    for qid, group in itertools.groupby(rows, key=lambda m: m[0]["question_id"]):
        if hash(qid) in finished:
            raise ValueError(f"question {qid!r}: its responses are not consecutive in the input (they were ranked "
                             "already); the reward stage reads the respond stage's order, one question after another")
        finished.add(hash(qid))
        yield list(group)


def reward(ctx: StageContext, cfg: RewardConfig) -> dict[str, Any]:
    """Score every (question, response) in the reward model's own chat format; keep the best of n per question,
    with every sample's extracted answer and the majority answer's share (a consistency signal).

    Every process scores its share of the responses' parts (resumable at part granularity); process 0 then
    streams responses and scores side by side and writes one ranked row per question."""
    path = ctx.model("model", cfg.model)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code,
                               setting=f"stages.{ctx.name}.config.trust_remote_code")
    if not getattr(tokenizer, "chat_template", None):
        raise ctx.error(f"the tokenizer of reward model {path} has no chat template; a reward model scores a "
                        "conversation in its own format, so it needs one (tokenizer_config.json: chat_template)")
    model = load_scorer(path, head=cfg.head, dtype=cfg.dtype)
    model.config.check_length(cfg.max_length, f"stages.{ctx.name}.config.max_length")

    def encode(rows: list[dict[str, Any]]) -> list[np.ndarray]:
        # = reward_inputs, batched
        return encode_texts(tokenizer, [reward_text(tokenizer, r["query"], r["response"]) for r in rows])

    parts, stats = _score_input(ctx, "responses", encode, model, cfg.batch_size, cfg.max_length)
    if not ctx.writer:
        return stats
    extra = model.config.reward_token_id is not None
    scored = list(load_scores(ctx.dir / "scores", len(parts)))  # 8 bytes a response
    scores = np.concatenate([p["scores"] for p in scored] or [np.zeros(0, np.float32)])
    truncated = int(sum(int((p["lengths"] + extra > cfg.max_length).sum()) for p in scored))
    pairs = zip(ctx.iter_records("responses"), (float(x) for x in scores), strict=True)
    with ctx.record_writer() as best:
        best.write_all(_best_of(group) for group in _question_groups(pairs))
    return {**stats, "responses": len(scores), "questions": best.rows, "rewards": describe(scores),
            "pooling_token": model.config.reward_token_id if extra else "last", "truncated": truncated}


KINDS = {
    "filter_difficulty": Kind(DifficultyConfig, difficulty, required_inputs=("questions",),
                              optional_inputs=("scorer",), collective=True),
    "reward": Kind(RewardConfig, reward, required_inputs=("responses",), optional_inputs=("model",),
                   collective=True),
}
