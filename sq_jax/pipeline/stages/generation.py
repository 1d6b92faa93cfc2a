"""Stages that run the sampling engine: question synthesis, the solvability judge, solver answers for difficulty
labels, and n responses per question. All go through the resumable offline job (`sq-jax generate`), so a killed
stage resumes at the last finished shard, and each request's seed comes from the pipeline seed and its id."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from sq_jax.configlib import fill
from sq_jax.data.dataset import iter_part, part_name, write_part
from sq_jax.data.sources import write_jsonl
from sq_jax.eval.extract import extract_all_boxed, extract_answer
from sq_jax.eval.grading import GradeRequest, grade_many
from sq_jax.parallel.distributed import sync
from sq_jax.pipeline.stages.base import DROPPED, RECORDS, Kind, StageContext
from sq_jax.prompts.judge import parse_judge_verdict
from sq_jax.sampling.generate_job import GenerateConfig, PromptSection, ShardSink, run_generate


@dataclasses.dataclass(frozen=True)
class GenerationConfig(GenerateConfig):
    """The generate job's config (`sq-jax generate`: samples_per_prompt, sampling, engine, backend, shard_size,
    window) with what the stage fills left open: `model` (the `model` input's export unless given), `output_dir`
    (the stage's generate/ folder) and `prompts` (the stage's input, read as its kind reads it). The stage adds the
    pipeline seed to `sampling.seed`."""

    model: str | None = None
    output_dir: str = ""
    limit: int | None = None  # first N input records (smoke runs)

    def __post_init__(self) -> None:
        # The job's own checks need its prompts: they run on the job config the stage builds.
        if self.output_dir or self.prompts != PromptSection():
            raise ValueError("output_dir and prompts are the stage's own (its folder and its input); remove them")


@dataclasses.dataclass(frozen=True)
class SynthesisConfig(GenerationConfig):
    count: int = 1000  # questions to synthesise from the pre-query template
    # A question cut at max_tokens is dropped (counted); keeping it is for tests of the machinery only.
    keep_truncated: bool = False


def generate(ctx: StageContext, cfg: GenerationConfig, mode: str, *, role: str | None = None,
             rows: Iterable[dict] | None = None, count: int = 0, judge_prompt: str = "sq-jax",
             carry: str = "field", sink: ShardSink | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run (or resume) the offline job; returns its manifest (merged over processes) and its stats.

    The prompts are the questions of input `role` (streamed from its records/ folder, no copy), or `rows` (a small
    selection, written to prompts.jsonl), or `count` pre-query samples. Every process generates its share, and
    with a `sink` (`record_sink`) turns each finished shard into parts of the stage's records itself."""
    prompts = PromptSection(mode=mode, count=count)
    if role is not None:
        prompts = PromptSection(mode=mode, path=str(ctx.inputs[role] / RECORDS), field="question", id_field="id",
                                limit=cfg.limit, judge_prompt=judge_prompt, carry=carry)
    elif rows is not None:
        path = ctx.dir / "prompts.jsonl"
        if ctx.writer:
            write_jsonl(path, ({"id": r["id"], "question": r["question"]} for r in rows))
        if ctx.collective:
            sync(f"prompts:{path}")
        prompts = PromptSection(mode=mode, path=str(path), field="question", id_field="id", judge_prompt=judge_prompt)
    sampling = dataclasses.replace(cfg.sampling, seed=cfg.sampling.seed + ctx.seed)
    job = fill(GenerateConfig, cfg, model=ctx.model("model", cfg.model), output_dir=str(ctx.dir / "generate"),
               prompts=prompts, sampling=sampling)
    manifest = run_generate(job, collective=ctx.collective, sink=sink)
    last = manifest["stats"].get("last_run", {})
    seconds = max(float(last.get("seconds", 0.0)), 1e-9)
    stats = {"requests": manifest["num_requests"], "finish": {k: manifest["stats"].get(k, 0)
                                                              for k in ("stop", "length", "cache", "error")},
             "last_run_requests_per_s": last.get("requests", 0) / seconds,
             "last_run_tokens_per_s": last.get("output_tokens", 0) / seconds}
    return manifest, stats


Convert = Callable[[list[dict[str, Any]]], tuple[list[dict], list[dict], dict[str, int]]]


def record_sink(ctx: StageContext, convert: Convert) -> ShardSink:
    """Shard k's outputs -> `records/part-k.jsonl` (kept) and `dropped/part-k.jsonl`, written by the process that
    generated it, straight into the stage's folder: the raw outputs are never on disk, and no host reads another's.
    `convert(outputs)` gives (kept rows, dropped rows with reasons, counts). An empty side writes no part."""
    def sink(k: int, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        kept, dropped, counts = convert(outputs)
        written = {"counts": counts}
        for side, folder, rows in (("dropped", DROPPED, dropped), ("records", RECORDS, kept)):
            written[side] = write_part(ctx.dir / folder / part_name(k), rows) if rows else None
        return written
    return sink


def adopt_shard_parts(ctx: StageContext, manifest: dict[str, Any]) -> dict[str, int]:
    """The stage's record parts and summed counts from the job's manifest (every shard's sink result)."""
    shards = manifest["shards"]
    missing = [k for k in range(manifest["num_shards"]) if str(k) not in shards]
    if missing:
        raise ctx.error(f"generation finished without the sink results of shard(s) {missing[:5]}: "
                        f"{ctx.dir / 'generate'} was written by an older sq-jax; delete the stage folder")
    ordered = [shards[str(k)] for k in range(manifest["num_shards"])]
    ctx.adopt_parts([s["records"] for s in ordered if s["records"]])
    totals: dict[str, int] = {}
    for s in ordered:
        for key, value in s["counts"].items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _outputs(shards: list[Path]) -> Iterator[list[dict[str, Any]]]:
    """One raw generation shard's outputs at a time (a shard is `shard_size` requests: bounded memory)."""
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
    def convert(outputs: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, int]]:
        rows, truncated, errors = finished_questions(outputs, ctx.name, keep_truncated=cfg.keep_truncated)
        return rows, [{**r, "reason": "length"} for r in truncated], {
            "questions": len(rows), "dropped_length": len(truncated), "errors": errors}

    manifest, stats = generate(ctx, cfg, "pre_query", count=cfg.count, sink=record_sink(ctx, convert))
    return {**stats, **adopt_shard_parts(ctx, manifest)}


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
    if cfg.samples_per_prompt != 1:
        raise ctx.error(f"samples_per_prompt={cfg.samples_per_prompt}: the judge gives one verdict per question; "
                        "use samples_per_prompt: 1")

    def convert(outputs: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, int]]:
        counts, kept, dropped = verdict_counts(), [], []
        for output in outputs:  # each output carries its whole question record under "input"
            keep, row = verdict_of(output["input"], output, counts, cfg.on_no_verdict)
            (kept if keep else dropped).append(row)
        return kept, dropped, counts

    manifest, stats = generate(ctx, cfg, "judge", role="questions", judge_prompt=cfg.prompt, carry="record",
                               sink=record_sink(ctx, convert))
    return {**stats, **adopt_shard_parts(ctx, manifest)}


@dataclasses.dataclass(frozen=True)
class ResponseConfig(GenerationConfig):
    # Drop responses without a final-answer marker (\boxed{}, "the answer is", "final answer is"), as the paper.
    require_answer: bool = True


def has_final_answer(text: str) -> bool:
    lowered = text.lower()
    return bool(extract_all_boxed(text)) or "he answer is" in lowered or "final answer is" in lowered


def respond(ctx: StageContext, cfg: ResponseConfig) -> dict[str, Any]:
    """n solutions per question with the solver prompt; each keeps its extracted final answer. A question's n
    responses are consecutive rows (the reward stage relies on it to rank them in one pass; a question's samples
    may straddle two parts, never reorder)."""
    def convert(outputs: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict[str, int]]:
        kept, counts = [], {"responses": 0, "dropped_no_answer": 0, "dropped_error": 0}
        for o in outputs:
            if o["finish_reason"] == "error":
                counts["dropped_error"] += 1
            elif cfg.require_answer and not has_final_answer(o["output"]):
                counts["dropped_no_answer"] += 1
            else:
                kept.append({"id": o["id"], "question_id": o["prompt_id"], "query": o["question"],
                             "response": o["output"].strip(), "answer": extract_answer(o["output"]),
                             "finish": o["finish_reason"]})
        counts["responses"] = len(kept)
        return kept, [], counts

    manifest, stats = generate(ctx, cfg, "solver", role="questions", sink=record_sink(ctx, convert))
    return {**stats, **adopt_shard_parts(ctx, manifest)}


@dataclasses.dataclass(frozen=True)
class LabelConfig(GenerationConfig):
    samples_per_prompt: int = 4  # solver attempts per seed question: the fail rate's resolution
    grade_timeout_s: float = 5.0


def difficulty_labels(ctx: StageContext, cfg: LabelConfig) -> dict[str, Any]:
    """Fail-rate labels: k solver attempts per seed question with a known answer, graded by the eval grader."""
    rows = [r for r in _inputs(ctx, cfg, "seeds") if r.get("answer") not in (None, "")]  # seeds: a small set
    if not rows:
        raise ctx.error("no seed question has an `answer`; difficulty labels need gold answers")
    manifest, stats = generate(ctx, cfg, "solver", rows=rows)
    # Process 0 alone grades and writes (a small set); the others only took their share of the generation.
    shards = [ctx.dir / "generate" / manifest["shards"][str(k)]["part"]["name"]
              for k in range(manifest["num_shards"])] if ctx.writer else []
    gold = {r["id"]: str(r["answer"]) for r in rows}
    right: dict[str, int] = {r["id"]: 0 for r in rows}
    extracted = 0
    for outputs in _outputs(shards):
        results = grade_many([GradeRequest(o["output"], gold[o["prompt_id"]]) for o in outputs],
                             timeout_s=cfg.grade_timeout_s)
        for o, res in zip(outputs, results):
            right[o["prompt_id"]] += bool(res.correct)
            extracted += extract_answer(o["output"]) is not None
    attempts = cfg.samples_per_prompt
    labelled = [{"id": r["id"], "question": r["question"], "score": 1.0 - right[r["id"]] / attempts,
                 "correct": right[r["id"]], "attempts": attempts} for r in rows]
    stats["mean_fail_rate"] = sum(x["score"] for x in labelled) / len(labelled)
    stats["extracted_answers"] = extracted
    stats["labelled"] = ctx.write_records(labelled)
    return stats


KINDS = {
    "synthesize": Kind(SynthesisConfig, synthesize, optional_inputs=("model",), collective=True, parts_are_work=True),
    "judge": Kind(JudgeConfig, judge, required_inputs=("questions",), optional_inputs=("model",), collective=True,
                  parts_are_work=True),
    "respond": Kind(ResponseConfig, respond, required_inputs=("questions",), optional_inputs=("model",),
                    collective=True, parts_are_work=True),
    "difficulty_labels": Kind(LabelConfig, difficulty_labels, required_inputs=("seeds",), optional_inputs=("model",), collective=True),
}
