"""Reward ranking (best of n), the dataset export, and evaluation of the tuned student."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Literal

from sq_jax.data.sources import write_jsonl
from sq_jax.pipeline.stages import Kind, StageContext
from sq_jax.sampling.server import EngineSettings


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    model: str | None = None  # a reward model (score head), e.g. internlm/internlm2-7b-reward; or the `model` input
    head: str | None = None  # "score": put a fresh head on a causal LM (smoke runs only: it scores noise)
    dtype: str = "bfloat16"
    batch_size: int = 32
    max_length: int = 4096
    # Real InternLM2 checkpoints ship their tokenizer as Python code in the repository; it runs only when allowed.
    trust_remote_code: bool = False


def reward_inputs(tokenizer: Any, query: str, response: str) -> list[int]:
    """Token ids of one (question, response) as internlm2-7b-reward's `get_score` builds them: the chat template
    rendered as text, then encoded without special tokens (the template writes its own BOS). The pooling token is
    appended by the scorer (`pooled_sequence`)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": query},
                                          {"role": "assistant", "content": response}],
                                         tokenize=False, add_generation_prompt=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _majority(answers: list[str | None]) -> tuple[str | None, float]:
    from sq_jax.eval.equivalence import normalize_answer

    keys = [normalize_answer(a) if a else None for a in answers]
    counts = collections.Counter(k for k in keys if k)
    if not counts:
        return None, 0.0
    key, votes = counts.most_common(1)[0]
    return answers[keys.index(key)], votes / len(answers)


def reward(ctx: StageContext, cfg: RewardConfig) -> dict[str, Any]:
    """Score every (question, response) in the reward model's own chat format; keep the best of n per question,
    with every sample's extracted answer and the majority answer's share (a consistency signal)."""
    from sq_jax.models.tokenizer import load_tokenizer
    from sq_jax.pipeline.scoring import describe, load_scorer, score_sequences

    path = ctx.model("model", cfg.model)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code,
                               setting=f"stages.{ctx.name}.config.trust_remote_code")
    if not getattr(tokenizer, "chat_template", None):
        raise ctx.error(f"the tokenizer of reward model {path} has no chat template; a reward model scores a "
                        "conversation in its own format, so it needs one (tokenizer_config.json: chat_template)")
    model = load_scorer(path, head=cfg.head, dtype=cfg.dtype)
    model.config.check_length(cfg.max_length, f"stages.{ctx.name}.config.max_length")
    rows = ctx.records("responses")
    encoded = [reward_inputs(tokenizer, r["query"], r["response"]) for r in rows]
    scores = score_sequences(model, encoded, batch_size=cfg.batch_size, max_length=cfg.max_length)
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["question_id"]].append(i)
    best = []
    for qid, members in groups.items():
        top = max(members, key=lambda i: (scores[i], -i))  # ties: the earliest sample
        answers = [rows[i].get("answer") for i in members]
        majority, share = _majority(answers)
        best.append({"id": qid, "query": rows[top]["query"], "response": rows[top]["response"],
                     "reward": float(scores[top]), "answer": rows[top].get("answer"), "answers": answers,
                     "majority_answer": majority, "majority_share": share, "num_responses": len(members),
                     "response_id": rows[top]["id"]})
    ctx.write_records(best)
    extra = model.config.reward_token_id is not None
    return {"responses": len(rows), "questions": len(best), "rewards": describe(scores),
            "pooling_token": model.config.reward_token_id if extra else "last",
            "truncated": sum(len(e) + extra > cfg.max_length for e in encoded)}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    name: str = "sq-jax-synthetic-math"
    push_to_hub: str | None = None  # a repo id; pushed when HF_TOKEN is set
    shard_rows: int = 100_000
    copy_to: str | None = None  # a folder or URL (gs://bucket/path, any fsspec filesystem) receiving a copy


def export(ctx: StageContext, cfg: ExportConfig) -> dict[str, Any]:
    """A `datasets` dataset on disk (query, response + provenance), JSONL and Parquet shards, and a dataset card."""
    import datasets

    from sq_jax.pipeline.runner import report_markdown

    rows = ctx.records("data")
    columns = ["query", "response", "id", "answer", "reward", "majority_answer", "majority_share", "num_responses"]
    table = [{c: (json.dumps(r.get(c)) if c == "answer" and isinstance(r.get(c), list) else r.get(c))
              for c in columns} for r in rows]
    dataset = datasets.Dataset.from_list(table)
    dataset.save_to_disk(str(ctx.dir / "dataset"))
    shards = 0
    for k, start in enumerate(range(0, len(table), cfg.shard_rows)):
        part = dataset.select(range(start, min(start + cfg.shard_rows, len(table))))
        write_jsonl(ctx.dir / "data" / f"train-{k:05d}.jsonl", part.to_list())
        part.to_parquet(str(ctx.dir / "data" / f"train-{k:05d}.parquet"))
        shards += 1
    report = json.loads((ctx.output_dir / "report.json").read_text()) if (ctx.output_dir / "report.json").exists() \
        else None
    card = [f"# {cfg.name}", "", "Math questions synthesised from scratch with sq-jax (ScaleQuest, arXiv "
            "2410.18693), filtered, answered and reward-ranked.", "", f"Rows: {len(table)}. Columns: "
            + ", ".join(f"`{c}`" for c in columns) + ".", ""]
    if report:
        card += ["## Run report (stages before the export)", "", report_markdown(report)]
    (ctx.dir / "README.md").write_text("\n".join(card) + "\n")
    pushed = None
    if cfg.push_to_hub and os.environ.get("HF_TOKEN"):
        dataset.push_to_hub(cfg.push_to_hub, token=os.environ["HF_TOKEN"])
        pushed = cfg.push_to_hub
    copied = None
    if cfg.copy_to:  # the dataset folder, the JSONL/Parquet shards and the card, as laid out here
        from sq_jax.data.remote import upload

        for name in ("dataset", "data", "README.md"):
            upload(ctx.dir / name, f"{cfg.copy_to.rstrip('/')}/{name}")
        copied = cfg.copy_to
    ctx.write_records(rows)
    return {"rows": len(table), "shards": shards, "pushed_to": pushed, "copied_to": copied}


@dataclasses.dataclass(frozen=True)
class EvalStageConfig:
    benchmarks: list[str] = dataclasses.field(
        default_factory=lambda: ["gsm8k", "math500", "college_math", "olympiadbench"])
    data_dir: str | None = None
    paths: dict[str, str] = dataclasses.field(default_factory=dict)  # benchmark -> local test file (college_math)
    limit: int | None = None
    max_tokens: int = 2048
    engine: EngineSettings = dataclasses.field(
        default_factory=lambda: EngineSettings(max_cache_length=4096, max_prefill_length=2048))
    backend: Literal["jetstream", "raw"] = "jetstream"
    model: str | None = None


def evaluate(ctx: StageContext, cfg: EvalStageConfig) -> dict[str, Any]:
    from sq_jax.eval.benchmarks import benchmark_path
    from sq_jax.eval.runner import EvalConfig, run_eval

    for name in cfg.benchmarks:  # before any model loads: a missing local file names this stage's key
        benchmark_path(name, data_dir=cfg.data_dir, paths=cfg.paths, prefix=f"stages.{ctx.name}.config.")
    report = run_eval(EvalConfig(model=ctx.model("model", cfg.model), output_dir=str(ctx.dir),
                                 benchmarks=list(cfg.benchmarks), data_dir=cfg.data_dir, paths=dict(cfg.paths),
                                 limit=cfg.limit,
                                 max_tokens=cfg.max_tokens, engine=cfg.engine, backend=cfg.backend),
                      collective=ctx.collective)
    return {name: round(m["accuracy"], 2) for name, m in report["metrics"].items()}


KINDS = {
    "reward": Kind(RewardConfig, reward, required_inputs=("responses",), optional_inputs=("model",)),
    "export": Kind(ExportConfig, export, required_inputs=("data",)),
    "eval": Kind(EvalStageConfig, evaluate, optional_inputs=("model",), produces="report"),
}
