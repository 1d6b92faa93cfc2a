"""`sq-jax eval`: benchmark questions -> the solver prompt of the model's family -> generation on the sampling
engine (the resumable offline job) -> grading across processes -> a JSON + markdown report and per-sample records.

Accuracy is the mean correctness of all samples (pass@1; greedy with one sample is the paper's number). With k
samples per question the report adds pass@k (any sample right) and maj@k (the most common extracted answer,
grouped by its normalised form, is right).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from sq_jax.data.dataset import atomic_open, iter_part, write_json_atomic, write_part
from sq_jax.data.sources import read_records
from sq_jax.eval.benchmarks import BenchmarkItem, benchmark_path, load_benchmark
from sq_jax.eval.equivalence import normalize_answer
from sq_jax.eval.grading import GradeRequest, grade_many
from sq_jax.eval.remote import remote_outputs
from sq_jax.parallel.distributed import is_lead, sync
from sq_jax.sampling.engine_factory import EngineSettings
from sq_jax.sampling.generate_job import GenerateConfig, PromptSection, SamplingSection, run_generate

log = logging.getLogger(__name__)

DEFAULT_BENCHMARKS = ("gsm8k", "math500", "college_math", "olympiadbench")
# The paper's headline numbers (SCALEQUEST.md section 6), for the report's comparison column.
PAPER = {"Qwen2-Math-7B + ScaleQuest": {"gsm8k": 89.7, "math": 73.4, "college_math": 50.0, "olympiadbench": 38.5}}
OUTPUT_FIELDS = ("prompt_id", "sample", "output")  # what a generation shard row must carry
KEPT_FIELDS = ("sample", "output", "prompt", "finish_reason")  # what grading and samples.jsonl read of it
# Room for a benchmark prompt and a 2048-token answer; a config's own `engine` section replaces it whole.
EVAL_ENGINE = EngineSettings(max_cache_length=4096, max_prefill_length=2048)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: str
    output_dir: str
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    data_dir: str | None = None  # local copies at <data_dir>/<benchmark>/test.jsonl instead of the hub
    paths: dict[str, str] = dataclasses.field(default_factory=dict)  # benchmark -> its local test file (wins)
    limit: int | None = None  # first N questions of each benchmark
    samples: int = 1  # k answers per question (pass@k, maj@k)
    temperature: float = 0.0  # greedy by default, as the paper; k > 1 needs a temperature
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    engine: EngineSettings = dataclasses.field(default_factory=lambda: EVAL_ENGINE)
    backend: Literal["jetstream", "raw"] = "jetstream"
    base_url: str | None = None  # an OpenAI-compatible server answers instead (`model` is then its model name)
    api_key_env: str = "SQ_JAX_API_KEY"
    grade_workers: int | None = None
    grade_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ValueError("benchmarks is empty")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0.0:
            raise ValueError("samples > 1 with temperature 0 would repeat one greedy answer; set a temperature")


def load_items(cfg: EvalConfig, prefix: str = "") -> dict[str, list[BenchmarkItem]]:
    items = {}
    for name in cfg.benchmarks:
        path = benchmark_path(name, data_dir=cfg.data_dir, paths=cfg.paths, prefix=prefix)
        items[name] = load_benchmark(name, path=path, limit=cfg.limit)
    return items


def _prompt_rows(items: dict[str, list[BenchmarkItem]]) -> list[dict[str, str]]:
    rows, seen = [], set()
    for name, bench in items.items():
        for item in bench:
            key = f"{name}/{item.id}"
            if key in seen:
                raise ValueError(f"benchmark {name!r} has two items with id {item.id!r}")
            seen.add(key)
            rows.append({"id": key, "question": item.question})
    return rows


def _generate(cfg: EvalConfig, rows: list[dict[str, str]], collective: bool) -> dict[str, list[dict[str, Any]]]:
    """Outputs per prompt id (in sample order); generation resumes where a killed run stopped."""
    if cfg.base_url:
        return remote_outputs(cfg, rows)
    out = Path(cfg.output_dir)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    prompts = out / f"prompts-{digest}.jsonl"
    if not prompts.exists() and (is_lead() or not collective):
        write_part(prompts, rows)
    if collective:
        sync(f"eval-prompts:{prompts}")
    gen_dir = out / "generations" / digest  # other questions (a new --limit) never reuse these shards
    job = GenerateConfig(
        model=cfg.model, output_dir=str(gen_dir),
        prompts=PromptSection(mode="solver", path=str(prompts), field="question", id_field="id"),
        samples_per_prompt=cfg.samples,
        sampling=SamplingSection(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                 seed=cfg.seed),
        engine=cfg.engine, backend=cfg.backend, shard_size=max(256, cfg.samples * 64),
    )
    manifest = run_generate(job, collective=collective)
    outputs = read_outputs(sorted(gen_dir.glob("shard-*.jsonl")))
    missing = [r["id"] for r in rows if len(outputs.get(r["id"], [])) != cfg.samples]
    if missing:
        raise RuntimeError(f"generation left {len(missing)} prompts without {cfg.samples} outputs, e.g. {missing[0]}")
    log.info("generation: %s", manifest["stats"].get("last_run"))
    return outputs


def read_outputs(shards: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Outputs per prompt id, in sample order, from the generate job's shards (streamed a row at a time; each
    row keeps only `KEPT_FIELDS`, not the prompt's other fields the job carries). A row without a required field,
    or a (prompt, sample) met twice, is an error naming the shard and row: never a silent duplicate."""
    found: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for shard in shards:
        for n, row in enumerate(iter_part(shard), start=1):
            missing = [f for f in OUTPUT_FIELDS if row.get(f) is None]
            if missing:
                raise ValueError(f"{shard}: row {n} has no {', '.join(missing)} (a generation output needs "
                                 f"{', '.join(OUTPUT_FIELDS)})")
            samples = found[row["prompt_id"]]
            if row["sample"] in samples:
                raise ValueError(f"{shard}: row {n} repeats sample {row['sample']} of prompt {row['prompt_id']!r} "
                                 "(two outputs for one sample: shards of two runs mixed in one folder?)")
            samples[row["sample"]] = {k: row.get(k) for k in KEPT_FIELDS}
    return {pid: [samples[j] for j in sorted(samples)] for pid, samples in found.items()}


def _majority_correct(extracted: list[str | None], correct: list[bool], unit: str | None) -> bool:
    votes: collections.Counter = collections.Counter()
    first: dict[str, int] = {}
    for i, answer in enumerate(extracted):
        if answer is None:
            continue
        key = normalize_answer(answer, unit)
        votes[key] += 1
        first.setdefault(key, i)
    if not votes:
        return False
    top = max(votes.values())
    winner = min((first[k] for k, v in votes.items() if v == top))  # ties: the earliest sample's answer
    return correct[winner]


def score(items: dict[str, list[BenchmarkItem]], outputs: dict[str, list[dict[str, Any]]],
          cfg: EvalConfig) -> tuple[dict[str, dict[str, float]], Iterator[dict[str, Any]]]:
    """Grade every sample; per-benchmark metrics (percent) and the per-sample records, built one at a time as
    they are read (written straight to samples.jsonl: no second copy of every output)."""
    requests, where = [], []
    for name, bench in items.items():
        for item in bench:
            for sample in outputs[f"{name}/{item.id}"]:
                requests.append(GradeRequest(sample["output"], item.gold, item.multiple, item.unit))
                where.append((name, item, sample))
    started = time.perf_counter()
    results = grade_many(requests, workers=cfg.grade_workers, timeout_s=cfg.grade_timeout_s)
    grading_s = time.perf_counter() - started
    per_question = collections.defaultdict(list)
    for (name, item, _), result in zip(where, results, strict=True):
        per_question[(name, item.id)].append((result, item.unit))
    metrics: dict[str, dict[str, float]] = {}
    for name, bench in items.items():
        graded = [per_question[(name, item.id)] for item in bench]
        flat = [r.correct for g in graded for r, _ in g]
        m = {"questions": len(bench), "samples": len(flat), "accuracy": 100.0 * sum(flat) / max(len(flat), 1),
             "timed_out": sum(r.timed_out for g in graded for r, _ in g)}
        if cfg.samples > 1:
            m[f"pass@{cfg.samples}"] = 100.0 * sum(any(r.correct for r, _ in g) for g in graded) / max(len(bench), 1)
            m[f"maj@{cfg.samples}"] = 100.0 * sum(
                _majority_correct([r.extracted for r, _ in g], [r.correct for r, _ in g], g[0][1]) for g in graded
            ) / max(len(bench), 1)
        metrics[name] = m
    per_bench = list(metrics.values())
    overall: dict[str, float] = {"questions": sum(m["questions"] for m in per_bench),
                                 "samples": sum(m["samples"] for m in per_bench),
                                 "timed_out": sum(m["timed_out"] for m in per_bench), "grading_s": grading_s}
    for key in [k for k in per_bench[0] if k == "accuracy" or "@" in k]:
        overall[key] = sum(m[key] for m in per_bench) / len(per_bench)  # unweighted over benchmarks, as the paper
    metrics["overall"] = overall
    return metrics, _sample_records(where, results)


def _sample_records(where: list[tuple[str, BenchmarkItem, dict[str, Any]]], results: list[Any],
                    ) -> Iterator[dict[str, Any]]:
    for (name, item, sample), result in zip(where, results, strict=True):
        yield {
            "benchmark": name, "id": item.id, "sample": sample["sample"], "prompt": sample.get("prompt"),
            "output": sample["output"], "finish_reason": sample.get("finish_reason"), "extracted": result.extracted,
            "gold": item.gold, "multiple": item.multiple, "unit": item.unit,
            "correct": result.correct, "timed_out": result.timed_out, "error": result.error,
        }


def markdown_report(cfg: EvalConfig, metrics: dict[str, dict[str, float]]) -> str:
    k = cfg.samples
    columns = ["questions", "accuracy"] + ([f"pass@{k}", f"maj@{k}"] if k > 1 else []) + ["timed_out"]
    heads = {"questions": "questions", "accuracy": "accuracy (%)", "timed_out": "graded wrong by timeout",
             f"pass@{k}": f"pass@{k} (%)", f"maj@{k}": f"maj@{k} (%)"}

    def cell(m: dict[str, float], c: str) -> str:
        if c not in m:
            return ""
        return f"{m[c]:.1f}" if c in ("accuracy", f"pass@{k}", f"maj@{k}") else str(m[c])

    setting = (f"Zero-shot chain of thought with the answer in `\\boxed{{}}`; {k} sample(s) per question at "
               f"temperature {cfg.temperature}, at most {cfg.max_tokens} new tokens"
               + (f"; the first {cfg.limit} questions of each benchmark" if cfg.limit else "") + ".")
    lines = [f"# Evaluation of `{cfg.model}`", "", setting, "",
             "| benchmark | " + " | ".join(heads[c] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, m in metrics.items():
        label = "**average over benchmarks**" if name == "overall" else name
        lines.append(f"| {label} | " + " | ".join(cell(m, c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def run_eval(cfg: EvalConfig, *, collective: bool = True) -> dict[str, Any]:
    """Generate, grade and write `samples.jsonl`, `report.md` and `report.json` under `output_dir`.

    Each file is written atomically (the dataset layer's writer), report.json last: a run killed while writing
    leaves each file whole, old or new, and a new report.json means the samples and table beside it are new too.
    `collective`: every process of a multi-host job runs this call (each generates its share; process 0 grades
    and writes); False when one process runs it alone."""
    out = Path(cfg.output_dir)
    items = load_items(cfg)
    outputs = _generate(cfg, _prompt_rows(items), collective)
    metrics, records = score(items, outputs, cfg)
    report = {"model": cfg.model, "config": dataclasses.asdict(cfg), "metrics": metrics, "paper": PAPER}
    if collective and not is_lead():
        return report
    write_part(out / "samples.jsonl", records)
    with atomic_open(out / "report.md") as f:
        f.write(markdown_report(cfg, metrics))
    write_json_atomic(out / "report.json", report)
    return report


def regrade(samples_path: str | Path, diff_path: str | Path | None = None, *, data_dir: str | None = None,
            workers: int | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """Grade the outputs of a saved `samples.jsonl` again with the current grader.

    Writes every sample whose verdict changed (old and new verdict and extracted answer, with the gold) to
    ``diff_path`` (default: ``regrade-diff.jsonl`` beside the samples) and returns the counts, per benchmark
    and overall. Records written before they carried ``multiple`` and ``unit`` take them from the benchmark
    items under ``data_dir``; a list gold with neither is an error (guessing would change verdicts silently).
    """
    samples_path = Path(samples_path)
    recs = read_records(samples_path, fields=("benchmark", "id", "output", "gold", "correct"))
    items: dict[tuple[str, str], BenchmarkItem] = {}
    if data_dir and any("multiple" not in r.data for r in recs):
        for name in sorted({r.data["benchmark"] for r in recs}):
            path = None if name.startswith("jsonl:") else str(Path(data_dir) / name / "test.jsonl")
            items.update({(name, it.id): it for it in load_benchmark(name, path=path)})
    requests = []
    for rec in recs:
        d = rec.data
        item = items.get((d["benchmark"], d["id"]))
        if "multiple" not in d and item is not None:
            d = {**d, "multiple": item.multiple, "unit": item.unit}
        elif not isinstance(d["gold"], str) and "multiple" not in d:
            raise ValueError(f"{rec.where}: gold is a list but the record has no 'multiple' field; "
                             "pass --data-dir with the benchmark files, or rerun `sq-jax eval`")
        requests.append(GradeRequest(d["output"], d["gold"], bool(d.get("multiple", False)), d.get("unit")))
    results = grade_many(requests, workers=workers, timeout_s=timeout_s)
    changed, counts = [], collections.defaultdict(collections.Counter)
    for rec, new in zip(recs, results):
        d = rec.data
        c = counts[d["benchmark"]]
        c["samples"] += 1
        c["old_correct"] += bool(d["correct"])
        c["new_correct"] += new.correct
        if new.correct != bool(d["correct"]):
            c["now_correct" if new.correct else "now_wrong"] += 1
            changed.append({"benchmark": d["benchmark"], "id": d["id"], "sample": d.get("sample"), "gold": d["gold"],
                            "old_extracted": d.get("extracted"), "new_extracted": new.extracted,
                            "old_correct": bool(d["correct"]), "new_correct": new.correct, "error": new.error,
                            "line": rec.line})
    diff_path = Path(diff_path) if diff_path else samples_path.with_name("regrade-diff.jsonl")
    write_part(diff_path, changed)
    keys = ("samples", "old_correct", "new_correct", "now_correct", "now_wrong")
    total = sum(counts.values(), collections.Counter())
    summary: dict[str, Any] = {name: {k: c[k] for k in keys} for name, c in [*counts.items(), ("overall", total)]}
    summary["diff_path"] = str(diff_path)
    return summary
