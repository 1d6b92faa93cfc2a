"""Pipeline stages at the paper's scale: 2M synthetic questions through language -> dedup -> decontaminate.

    python benchmarks/pipeline_scale.py [--questions 2000000] [--stages filters] [--work DIR] [--data ../shared/data]

The questions are synthetic but shaped like the real ones: word counts drawn from the ScaleQuest-Math samples
(`<data>/scalequest/samples.jsonl`), words drawn from their vocabulary (ASCII words, numbers and LaTeX as written
there). Planted among them, each a known share: near-duplicates of a recent question (exact copies, case, spacing,
punctuation and LaTeX-markup variants, one-word edits of long questions: all to be dropped; number-only edits: to
be kept), benchmark test questions (verbatim or behind a preamble: dropped by decontamination) and questions the
language filter drops (non-ASCII, too short, empty). They are written as a stage's `records/` folder of parts, then
the real stage functions run on it, each stage in a fresh subprocess so that its peak RSS (`ru_maxrss` of that
process: imports included) is its own. Prints per stage: seconds, rows/s, peak RSS; for dedup also the index's
bytes per kept question (its numpy arrays' `nbytes`, capacities included).

One function per stage group (`--stages`, comma-separated): `filters` (language, dedup, decontaminate) and
`reward` (the reward stage at each of `--responses` sizes).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data"
FILTER_STAGES = ("language", "dedup", "decontaminate")  # each reads the previous one's records
PLANT_RATES = {"copy": 0.01, "case": 0.005, "markup": 0.005, "word_edit": 0.005, "number_edit": 0.005,
               "benchmark": 0.0005, "benchmark_preamble": 0.0005, "non_ascii": 0.002, "too_short": 0.001,
               "empty": 0.0005}


# ------------------------------------------------------------------------------------------ synthetic input


def _real_questions(data: Path) -> list[str]:
    with (data / "scalequest" / "samples.jsonl").open() as f:
        return [json.loads(line)["query"] for line in f if line.strip()]


def _benchmark_questions(data: Path) -> list[str]:
    from sq_jax.eval.benchmarks import load_benchmark

    return [item.question for name in ("gsm8k", "math500", "college_math", "olympiadbench")
            for item in load_benchmark(name, path=str(data / name / "test.jsonl"))]


def _variant(kind: str, source: str, rng: random.Random) -> str | None:
    """A planted copy of ``source`` (None when the source does not suit the kind)."""
    words = source.split()
    if kind == "copy":
        return source
    if kind == "case":
        return source.upper() if rng.random() < 0.5 else source.lower()
    if kind == "markup":
        return "  " + source.replace("$", "").replace("(", "\\left(").replace(")", "\\right)").replace(" ", " ,  ")
    if kind == "word_edit":
        # Jaccard (w - 5) / (w + 1) >= 0.87 from 45 words: caught nearly always (NearDuplicateFilter's notes).
        plain = [i for i, w in enumerate(words[len(words) // 3 :], len(words) // 3) if w.isalpha()]
        if len(words) < 45 or not plain:
            return None
        i = rng.choice(plain)
        return " ".join(words[:i] + ["really" if words[i] != "really" else "truly"] + words[i + 1 :])
    if kind == "number_edit":  # another problem: must survive dedup
        numbered = [i for i, w in enumerate(words) if w.isdigit()]
        if not numbered:
            return None
        i = rng.choice(numbered)
        return " ".join(words[:i] + [str(int(words[i]) + 1 + rng.randrange(9))] + words[i + 1 :])
    raise ValueError(kind)


def synthetic_questions(n: int, data: Path, seed: int = 0, planted: Counter | None = None) -> Iterator[dict]:
    """``n`` rows {id, question, planted (its kind, on planted rows)}; ``planted`` counts them by kind."""
    rng = random.Random(seed)
    real = _real_questions(data)
    lengths = [len(q.split()) for q in real]
    vocab = [w for q in real for w in q.split() if w.isascii()]
    bench = _benchmark_questions(data)
    recent: deque[str] = deque(maxlen=4096)
    kinds, weights = list(PLANT_RATES), list(PLANT_RATES.values())
    plant_share = sum(weights)
    planted = planted if planted is not None else Counter()
    for i in range(n):
        text, kind = None, None
        if recent and rng.random() < plant_share:
            kind = rng.choices(kinds, weights)[0]
            if kind.startswith("benchmark"):
                q = rng.choice(bench)
                text = q if kind == "benchmark" else "Answer the following question carefully. " + q
            elif kind == "non_ascii":
                text = rng.choice(recent) + " Antwort für Anna?"
            elif kind == "too_short":
                text = "Solve x."
            elif kind == "empty":
                text = "   "
            else:
                text = _variant(kind, rng.choice(recent), rng)
            if text is not None:
                planted[kind] += 1
            else:
                kind = None
        if text is None:
            length = max(3, round(rng.choice(lengths) * rng.uniform(0.8, 1.2)))
            words = rng.choices(vocab, k=length)
            # Numbers in most questions, as in the real ones (the dedup numbers rule then has work to do).
            words[rng.randrange(length)] = str(rng.randrange(2, 1000))
            text = " ".join(words) + "?"
            recent.append(text)
        # The kind rides along (planted rows only) so that the outputs show where each one went.
        yield {"id": f"q{i:08d}", "question": text, **({"planted": kind} if kind else {})}


def write_questions(folder: Path, n: int, data: Path, seed: int = 0) -> Counter:
    """``folder``/records/part-*.jsonl with ``n`` synthetic questions, like an upstream stage's output."""
    from sq_jax.data.dataset import PartWriter

    planted: Counter = Counter()
    shutil.rmtree(folder, ignore_errors=True)
    with PartWriter(folder / "records") as writer:
        writer.write_all(synthetic_questions(n, data, seed, planted))
    return planted


# ------------------------------------------------------------------------------------------ one stage, measured


def run_filter_stage(stage: str, work: Path, data: Path) -> dict[str, Any]:
    """Run one filter stage's real function on ``work``/<upstream>; its stats, seconds and this process's peak RSS."""
    from sq_jax.pipeline.stages import StageContext
    from sq_jax.pipeline.stages import filtering as f

    upstream = "questions" if stage == FILTER_STAGES[0] else FILTER_STAGES[FILTER_STAGES.index(stage) - 1]
    ctx = StageContext(name=stage, dir=work / stage, inputs={"questions": work / upstream}, seed=0, output_dir=work)
    shutil.rmtree(ctx.dir, ignore_errors=True)
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    if stage == "language":
        stats = f.language(ctx, f.LanguageConfig())
    elif stage == "dedup":
        cfg = f.DedupConfig()
        index = f.NearDuplicateFilter(cfg.threshold, cfg.num_perm, cfg.shingle, seed=ctx.seed)
        stats = f.near_duplicates(ctx, cfg, index)
        extra = {"index_bytes": index.nbytes, "index_rows": len(index)}
    else:
        stats = f.contamination(ctx, f.DecontaminationConfig(data_dir=str(data)))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"stage": stage, "seconds": seconds, "stats": stats, "peak_rss": peak, **extra}


def _in_subprocess(stage: str, work: Path, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", stage, "--work", str(work), "--data", str(data)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ stage groups


def filters(work: Path, n: int, data: Path, run: Callable[[str, Path, Path], dict] = _in_subprocess) -> list[dict]:
    """Write ``n`` questions, then language -> dedup -> decontaminate; one result row per step."""
    start = time.perf_counter()
    planted = write_questions(work / "questions", n, data)
    rows = [{"stage": "write questions", "seconds": time.perf_counter() - start, "rows": n,
             "planted": dict(sorted(planted.items()))}]
    for stage in FILTER_STAGES:
        result = run(stage, work, data)
        result["rows"] = result["stats"]["input"]
        rows.append(result)
    return rows


def planted_outcomes(work: Path) -> dict[str, dict[str, int]]:
    """Planted kind -> {stage that dropped it: count, "kept": count that came through all the filters}."""
    from sq_jax.data.dataset import iter_rows

    out: dict[str, Counter] = {}
    for stage in FILTER_STAGES:
        for row in iter_rows(work / stage / "dropped"):
            out.setdefault(row.get("planted", "none"), Counter())[stage] += 1
    for row in iter_rows(work / FILTER_STAGES[-1] / "records"):
        if "planted" in row:
            out.setdefault(row["planted"], Counter())["kept"] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(out.items())}


def reward(work: Path, sizes: list[int]) -> list[dict]:
    """The reward stage (tiny score-head model, responses cut to 128 tokens) on each size, a fresh process each
    (benchmarks/reward_scale.py), so the peak RSS of the sizes can be compared: flat means streamed."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "reward_scale.py"), "--one", str(n), "--work", str(work)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                         .stdout.strip().splitlines()[-1])
        rows.append({"stage": f"reward, {n:,} responses", "rows": n, "seconds": out["seconds"],
                     "peak_rss": out["peak_rss_mib"] * 2**20,
                     "stats": {"questions": out["questions"], "truncated": out["truncated"]}})
        from reward_scale import format_timeline  # this script's folder is on sys.path

        print(f"RSS timeline, {n:,} responses:\n{format_timeline(out['timeline'])}\n", flush=True)
    return rows


GROUPS = {"filters": filters, "reward": reward}


def format_table(rows: list[dict]) -> str:
    lines = ["| stage | rows in | kept | seconds | rows/s | peak RSS | notes |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        stats = r.get("stats", {})
        rss = f"{r['peak_rss'] / 2**30:.2f} GiB" if "peak_rss" in r else ""
        notes = {k: v for k, v in stats.items() if k not in ("input", "kept", "dropped")} if stats else r.get("planted")
        if "index_bytes" in r:
            notes = {**notes, "index bytes/question": round(r["index_bytes"] / max(r["index_rows"], 1))}
        lines.append(f"| {r['stage']} | {r['rows']:,} | {stats.get('kept', '') if stats else ''} | "
                     f"{r['seconds']:.1f} | {r['rows'] / max(r['seconds'], 1e-9):,.0f} | {rss} | "
                     f"{json.dumps(notes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=2_000_000)
    parser.add_argument("--stages", default="filters", help=f"comma-separated groups: {', '.join(GROUPS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sq-jax-pipeline-scale"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--responses", default="50000,250000", help="reward group: comma-separated sizes")
    parser.add_argument("--child", choices=FILTER_STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_filter_stage(args.child, args.work, args.data)))
        return
    for group in args.stages.split(","):
        if group not in GROUPS:
            parser.error(f"--stages: unknown group {group!r} (known: {', '.join(GROUPS)})")
        if group == "reward":
            rows = reward(args.work / group, [int(n) for n in args.responses.split(",")])
            print("\nreward:")
            print(format_table(rows))
            low, high = min(r["peak_rss"] for r in rows), max(r["peak_rss"] for r in rows)
            print(f"peak RSS spread across sizes: {100 * (high - low) / low:.1f}% (target: within 10%)")
            continue
        rows = GROUPS[group](args.work / group, args.questions, args.data.resolve())
        total = sum(r["seconds"] for r in rows[1:])
        print(f"\n{group}: {args.questions:,} questions, {total:.1f} s through the stages, "
              f"peak RSS {max(r['peak_rss'] for r in rows[1:]) / 2**30:.2f} GiB (ru_maxrss of each stage's process)")
        print(format_table(rows))
        if group == "filters":
            print("\nwhere the planted rows went (\"none\": unplanted rows dropped):",
                  json.dumps(planted_outcomes(args.work / group)))


if __name__ == "__main__":
    main()
