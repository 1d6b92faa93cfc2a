"""The reward stage at scale: memory flat in the number of responses, rows/s printed.

    python benchmarks/reward_scale.py --sizes 50000 250000

Synthetic responses, realistic in length: each row's query and response are real ScaleQuest rows
(`../shared/data/scalequest/samples.jsonl`), drawn at random, so the token lengths follow the released data; cut to
128 tokens (`max_length`), as the issue's target says. Five responses per question, consecutive, as the respond
stage writes them, in parts of 1000 rows (the respond stage's default shard size). The reward model is the tiny
embedded model with a fresh score head (its scores are noise; the work per token is what is measured).

Each size runs the real stage (`sq_jax.pipeline.stages.scored.reward`) in a fresh subprocess, which reports its
own peak RSS (`ru_maxrss`), so the sizes do not share a heap. A thread samples the process's RSS every 0.2 s and
the timeline is printed per phase (input written, model loaded and first part scored, every tenth of the score
parts, the records pass): flat across the parts means nothing grows with the rows scored.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / ".." / "shared" / "data" / "scalequest" / "samples.jsonl"
PART_ROWS = 1000
SAMPLES_PER_QUESTION = 5


def write_responses(folder: Path, rows: int, seed: int = 0) -> None:
    from sq_jax.data.dataset import PartWriter

    real = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    with PartWriter(folder / "records", PART_ROWS) as writer:
        for i in range(rows):
            q, j = divmod(i, SAMPLES_PER_QUESTION)
            sample = rng.choice(real)
            writer.write({"id": f"q{q:09d}#{j}", "question_id": f"q{q:09d}", "query": sample["query"],
                          "response": sample["response"], "answer": None, "finish": "stop"})
    parts = writer.parts
    (folder / "_stage.json").write_text(json.dumps({"status": "done", "parts": parts}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssTimeline:
    """Samples RSS every `interval` s, labelled with the phase the stage is in (scored parts on disk)."""

    def __init__(self, scores: Path, records: Path, parts: int, interval: float = 0.2):
        self.scores, self.records, self.parts, self.interval = scores, records, parts, interval
        self.points: list[dict] = []  # {phase, rss_mib: the most seen in the phase}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def phase(self) -> str:
        if self.records.is_dir() and any(self.records.iterdir()):
            return "records pass"
        done = len(list(self.scores.glob("part-*.npz"))) if self.scores.is_dir() else 0
        if done == 0:
            return "model load, compile, part 1"
        if done == self.parts:
            return "all parts scored"
        step = max(self.parts // 10, 1)
        first = done // step * step + 1
        return f"scoring parts {max(first, 2)}-{min(first + step - 1, self.parts)} of {self.parts}"

    def mark(self, phase: str) -> None:
        self.points.append({"phase": phase, "rss_mib": round(_rss_mib(), 1)})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            phase = self.phase()
            if self.points[-1]["phase"] != phase:
                print(f"RSS: {json.dumps(self.points[-1])}", file=sys.stderr, flush=True)  # a killed run shows it too
                self.mark(phase)
            last = self.points[-1]
            last["rss_mib"] = max(last["rss_mib"], round(_rss_mib(), 1))

    def __enter__(self) -> RssTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mark("stage returned")


def format_timeline(points: list[dict]) -> str:
    lines = ["| phase | RSS (MiB, the most sampled in the phase) |", "|---|---:|"]
    lines += [f"| {p['phase']} | {p['rss_mib']} |" for p in points]
    return "\n".join(lines)


def run_one(work: Path, rows: int) -> dict:
    """The stage on `rows` responses, in this process (called in a fresh subprocess per size)."""
    from sq_jax.pipeline.stages import StageContext
    from sq_jax.pipeline.stages.scored import RewardConfig, reward
    from sq_jax.toy.tiny import build_tiny

    model = build_tiny(work / "tiny") if not (work / "tiny" / "config.json").exists() else work / "tiny"
    upstream = work / f"responses-{rows}"
    write_responses(upstream, rows)
    stage = work / f"rewards-{rows}"
    ctx = StageContext(name="rewards", dir=stage, inputs={"responses": upstream}, seed=0, output_dir=work)
    timeline = RssTimeline(stage / "scores", stage / "records", -(-rows // PART_ROWS))
    timeline.mark("input written")
    started = time.perf_counter()
    with timeline:
        stats = reward(ctx, RewardConfig(model=str(model), head="score", dtype="float32", batch_size=32,
                                         max_length=128))
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "questions": stats["questions"], "truncated": stats["truncated"], "timeline": timeline.points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 250_000])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size here
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="reward-scale-"))
    if args.one is not None:
        print(json.dumps(run_one(work, args.one)))
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    results = []
    for rows in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(rows), "--work", str(work)], env=env,
                             stdout=subprocess.PIPE, text=True, check=True)  # stderr: the bar, errors
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "timeline"}), flush=True)
        print(f"\nRSS timeline, {rows:,} responses:\n{format_timeline(results[-1]['timeline'])}\n", flush=True)
    print("\n| responses | seconds | rows/s | peak RSS (MiB) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['seconds']} | {r['rows_per_s']} | {r['peak_rss_mib']} |")
    low, high = min(r["peak_rss_mib"] for r in results), max(r["peak_rss_mib"] for r in results)
    print(f"\npeak RSS spread across sizes: {100 * (high - low) / low:.1f}% (target: within 10%)")


if __name__ == "__main__":
    main()
