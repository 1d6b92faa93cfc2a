"""Stages that run the sampling engine: question synthesis, the solvability judge, solver answers for difficulty
labels, and n responses per question. All go through the resumable offline job (`sq-jax generate`), so a killed
stage resumes at the last finished shard, and each request's seed comes from the pipeline seed and its id."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from sq_jax.data.dataset import iter_part
from sq_jax.data.sources import write_jsonl
from sq_jax.eval.extract import extract_all_boxed, extract_answer
from sq_jax.models.tokenizer import parse_judge_verdict
from sq_jax.pipeline.stages import RECORDS, Kind, StageContext
from sq_jax.parallel.distributed import sync
from sq_jax.sampling.generate_job import GenerateConfig, PromptSection, SamplingSection, run_generate
from sq_jax.sampling.server import EngineSettings


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    model: str | None = None  # default: the `model` input's exported checkpoint
    samples: int = 1
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    backend: Literal["jetstream", "raw"] = "jetstream"
    shard_size: int = 1000
    window: int | None = None
    limit: int | None = None  # first N input records (smoke runs)


@dataclasses.dataclass(frozen=True)
class SynthesisConfig(GenerationConfig):
    count: int = 1000  # questions to synthesise from the pre-query template
    # A question cut at max_tokens is dropped (counted); keeping it is for tests of the machinery only.
    keep_truncated: bool = False


def generate(ctx: StageContext, cfg: GenerationConfig, mode: str, *, role: str | None = None,
             rows: Iterable[dict] | None = None, count: int = 0, judge_prompt: str = "sq-jax",
             ) -> tuple[list[Path], dict[str, Any]]:
    """Run (or resume) the offline job; returns its finished shard files in request order and its stats.

    The prompts are the questions of input `role` (read from its records/ folder, no copy), or `rows` (a small
    selection, written to prompts.jsonl), or `count` pre-query samples. Every process generates its share; the
    shards are then read one at a time by process 0 alone (the stage turns each into one part of its records),
    so no host ever holds the whole output."""
    prompts = PromptSection(mode=mode, count=count)
    if role is not None:
        prompts = PromptSection(mode=mode, path=str(ctx.inputs[role] / RECORDS), field="question", id_field="id",
                                limit=cfg.limit, judge_prompt=judge_prompt)
    elif rows is not None:
        path = ctx.dir / "prompts.jsonl"
        if ctx.writer:
            write_jsonl(path, ({"id": r["id"], "question": r["question"]} for r in rows))
        if ctx.collective:
            sync(f"prompts:{path}")
        prompts = PromptSection(mode=mode, path=str(path), field="question", id_field="id", judge_prompt=judge_prompt)
    sampling = dataclasses.replace(cfg.sampling, seed=cfg.sampling.seed + ctx.seed)
    job = GenerateConfig(model=ctx.model("model", cfg.model), output_dir=str(ctx.dir / "generate"), prompts=prompts,
                         samples_per_prompt=cfg.samples, sampling=sampling, engine=cfg.engine, backend=cfg.backend,
                         shard_size=cfg.shard_size, window=cfg.window)
    manifest = run_generate(job, collective=ctx.collective)
    last = manifest["stats"].get("last_run", {})
    seconds = max(float(last.get("seconds", 0.0)), 1e-9)
    stats = {"requests": manifest["num_requests"], "finish": {k: manifest["stats"].get(k, 0)
                                                              for k in ("stop", "length", "cache", "error")},
             "last_run_requests_per_s": last.get("requests", 0) / seconds,
             "last_run_tokens_per_s": last.get("output_tokens", 0) / seconds}
    shards = [Path(job.output_dir) / f"shard-{k:05d}.jsonl" for k in range(manifest["num_shards"])]
    return (shards if ctx.writer else []), stats


def _outputs(shards: list[Path]) -> Iterator[list[dict[str, Any]]]:
    """One generation shard's outputs at a time (a shard is `shard_size` requests: bounded memory)."""
    for path in shards:
        yield list(iter_part(path))


def _inputs(ctx: StageContext, cfg: GenerationConfig, role: str = "questions") -> Iterator[dict[str, Any]]:
    return itertools.islice(ctx.iter_records(role), cfg.limit)


def finished_questions(outputs: list[dict[str, Any]], stage: str, keep_truncated: bool = False,
                       ) -> tuple[list[dict], list[dict], int]:
    """(questions, questions cut at max_tokens, errors) from synthesis outputs, ids `<stage>-<prompt id>`.

    A question that stopped on `max_tokens` never ended (it has no end-of-question token): it is set apart, before
    any filter or the judge spends time on it."""
    rows, truncated, errors = [], [], 0
    for o in outputs:
        if o["finish_reason"] == "error":
            errors += 1
            continue
        row = {"id": f"{stage}-{o['prompt_id']}", "question": o["output"].strip(), "finish": o["finish_reason"]}
        (truncated if o["finish_reason"] == "length" and not keep_truncated else rows).append(row)
    return rows, truncated, errors


def synthesize(ctx: StageContext, cfg: SynthesisConfig) -> dict[str, Any]:
    """Questions from nothing: the pre-query template, prefilled once and sampled `count` times. Questions cut at
    `max_tokens` are dropped, counted (`dropped_length`) and kept in `dropped/` for inspection."""
    shards, stats = generate(ctx, cfg, "pre_query", count=cfg.count)
    stats.update(errors=0, dropped_length=0)
    with ctx.record_writer() as kept, ctx.dropped_writer() as dropped:
        for outputs in _outputs(shards):
            rows, truncated, errors = finished_questions(outputs, ctx.name, keep_truncated=cfg.keep_truncated)
            stats["errors"] += errors
            stats["dropped_length"] += len(truncated)
            kept.write_all(rows)
            dropped.write_all({**r, "reason": "length"} for r in truncated)
            kept.flush()  # one part per generation shard
    stats["questions"] = kept.rows
    return stats


@dataclasses.dataclass(frozen=True)
class JudgeConfig(GenerationConfig):
    # A reply without a verdict is dropped; `keep` exists for judges too small to follow the format (the tiny
    # default), so the stage still runs end to end. Either way it is counted.
    on_no_verdict: Literal["drop", "keep"] = "drop"
    # "sq-jax": a checklist ending in a `Final verdict: Yes|No` line; "paper": the authors' instruction, which asks
    # only to "conclude with either 'Yes' or 'No'" (read from the reply's last line).
    prompt: Literal["sq-jax", "paper"] = "sq-jax"


def verdict_of(row: dict[str, Any], output: dict[str, Any], counts: dict[str, int], on_no_verdict: str = "drop",
               ) -> tuple[bool, dict[str, Any]]:
    """(kept?, the row, or its dropped copy with the reason) for one question and the judge's reply; counts it.

    A reply cut at `max_tokens` (finish `length`) counts only an explicit `verdict:` it already wrote: its last
    line is mid-reasoning. Counts: verdict_yes / verdict_no / no_verdict (every reply is one), truncated, and
    dropped_unsolvable / dropped_no_verdict; `on_no_verdict: keep` keeps replies without a verdict.
    """
    truncated = output["finish_reason"] == "length"
    counts["input"] += 1
    counts["truncated"] += truncated
    verdict = parse_judge_verdict(output["output"], fallback=not truncated)
    counts["verdict_yes" if verdict else "verdict_no" if verdict is False else "no_verdict"] += 1
    if verdict is None and on_no_verdict == "keep":
        verdict = True
    if verdict is True:
        counts["kept"] += 1
        return True, row
    reason = "unsolvable" if verdict is False else "no_verdict"
    counts[f"dropped_{reason}"] += 1
    return False, {**row, "reason": reason, "judge_finish": output["finish_reason"],
                   "judge_reply_end": output["output"][-400:]}


def verdict_counts() -> dict[str, int]:
    return {"input": 0, "kept": 0, "verdict_yes": 0, "verdict_no": 0, "no_verdict": 0, "truncated": 0,
            "dropped_unsolvable": 0, "dropped_no_verdict": 0}


def tally_verdicts(rows: list[dict[str, Any]], outputs: dict[str, dict[str, Any]], on_no_verdict: str = "drop",
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(kept, dropped with reasons, counts) from the judge's output per question id (see `verdict_of`)."""
    counts, kept, dropped = verdict_counts(), [], []
    for r in rows:
        keep, row = verdict_of(r, outputs[r["id"]], counts, on_no_verdict)
        (kept if keep else dropped).append(row)
    return kept, dropped, counts


def judge(ctx: StageContext, cfg: JudgeConfig) -> dict[str, Any]:
    """Solvability filter: the judge reasons, then gives its verdict (`parse_judge_verdict`, `verdict_of`).
    Dropped questions go to `dropped/` with the reason and the reply's end."""
    if cfg.samples != 1:
        raise ctx.error(f"samples={cfg.samples}: the judge gives one verdict per question; use samples: 1")
    shards, stats = generate(ctx, cfg, "judge", role="questions", judge_prompt=cfg.prompt)
    counts = verdict_counts()
    rows = _inputs(ctx, cfg)  # the outputs are in the questions' order, one each: read both side by side
    with ctx.record_writer() as kept, ctx.dropped_writer() as dropped:
        for outputs in _outputs(shards):
            for output in outputs:
                row = next(rows, None)
                if row is None or row["id"] != output["prompt_id"]:
                    raise ctx.error(f"judge output {output['prompt_id']!r} does not match input question "
                                    f"{None if row is None else row['id']!r}: the questions changed under the job")
                keep, row = verdict_of(row, output, counts, cfg.on_no_verdict)
                (kept if keep else dropped).write(row)
            kept.flush()
    return {**stats, **counts}


@dataclasses.dataclass(frozen=True)
class ResponseConfig(GenerationConfig):
    # Drop responses without a final-answer marker (\boxed{}, "the answer is", "final answer is"), as the paper.
    require_answer: bool = True


def has_final_answer(text: str) -> bool:
    lowered = text.lower()
    return bool(extract_all_boxed(text)) or "he answer is" in lowered or "final answer is" in lowered


def respond(ctx: StageContext, cfg: ResponseConfig) -> dict[str, Any]:
    """n solutions per question with the solver prompt; each keeps its extracted final answer. A question's n
    responses are consecutive rows (the reward stage relies on it to rank them in one pass)."""
    shards, stats = generate(ctx, cfg, "solver", role="questions")
    dropped = {"dropped_no_answer": 0, "dropped_error": 0}
    with ctx.record_writer() as kept:
        for outputs in _outputs(shards):
            for o in outputs:
                if o["finish_reason"] == "error":
                    dropped["dropped_error"] += 1
                    continue
                if cfg.require_answer and not has_final_answer(o["output"]):
                    dropped["dropped_no_answer"] += 1
                    continue
                kept.write({"id": o["id"], "question_id": o["prompt_id"], "query": o["question"],
                            "response": o["output"].strip(), "answer": extract_answer(o["output"]),
                            "finish": o["finish_reason"]})
            kept.flush()
    stats.update(dropped, responses=kept.rows)
    return stats


@dataclasses.dataclass(frozen=True)
class LabelConfig(GenerationConfig):
    samples: int = 4  # solver attempts per seed question: the fail rate's resolution
    grade_timeout_s: float = 5.0


def difficulty_labels(ctx: StageContext, cfg: LabelConfig) -> dict[str, Any]:
    """Fail-rate labels: k solver attempts per seed question with a known answer, graded by the eval grader."""
    from sq_jax.eval.grading import GradeRequest, grade_many

    rows = [r for r in _inputs(ctx, cfg, "seeds") if r.get("answer") not in (None, "")]  # seeds: a small set
    if not rows:
        raise ctx.error("no seed question has an `answer`; difficulty labels need gold answers")
    shards, stats = generate(ctx, cfg, "solver", rows=rows)
    gold = {r["id"]: str(r["answer"]) for r in rows}
    right: dict[str, int] = {r["id"]: 0 for r in rows}
    extracted = 0
    for outputs in _outputs(shards):
        results = grade_many([GradeRequest(o["output"], gold[o["prompt_id"]]) for o in outputs],
                             timeout_s=cfg.grade_timeout_s)
        for o, res in zip(outputs, results):
            right[o["prompt_id"]] += bool(res.correct)
            extracted += extract_answer(o["output"]) is not None
    labelled = [{"id": r["id"], "question": r["question"], "score": 1.0 - right[r["id"]] / cfg.samples,
                 "correct": right[r["id"]], "attempts": cfg.samples} for r in rows]
    stats["mean_fail_rate"] = sum(x["score"] for x in labelled) / len(labelled)
    stats["extracted_answers"] = extracted
    stats["labelled"] = ctx.write_records(labelled)
    return stats


KINDS = {
    "synthesize": Kind(SynthesisConfig, synthesize, optional_inputs=("model",), collective=True),
    "judge": Kind(JudgeConfig, judge, required_inputs=("questions",), optional_inputs=("model",), collective=True),
    "respond": Kind(ResponseConfig, respond, required_inputs=("questions",), optional_inputs=("model",), collective=True),
    "difficulty_labels": Kind(LabelConfig, difficulty_labels, required_inputs=("seeds",), optional_inputs=("model",), collective=True),
}
