"""The generate job's prompts at paper scale: what a host holds to feed its share of the shards.

    python benchmarks/generation_prompts_scale.py --questions 1000000 --processes 4

Writes `--questions` question records (real ScaleQuest questions from `../shared/data/scalequest/samples.jsonl`,
drawn at random, unique ids) as a stage's records folder, then, each in a fresh subprocess so they do not share a
heap, walks what one host of `--processes` does before and while generating the respond stage (5 samples a
question, shards of 1000 requests): the id check over the whole input (`count_prompts`) and the host's own
shards (`iter_shards`), each shard dropped as the engine would finish it. For contrast, the same host holding
every prompt in a list (`build_prompts`, what the job did before). Prints seconds and peak RSS (`ru_maxrss`).
No model: the prompts are rendered with the Qwen chat format, as the tiny and Qwen2-Math models use.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / ".." / "shared" / "data" / "scalequest" / "samples.jsonl"


def write_questions(folder: Path, count: int, seed: int = 0) -> None:
    from sq_jax.data.dataset import PartWriter

    real = [json.loads(line)["query"] for line in SAMPLES.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    with PartWriter(folder / "records", 10_000) as writer:
        for i in range(count):
            writer.write({"id": f"questions-q{i:09d}", "question": rng.choice(real), "finish": "stop"})


def run_one(work: Path, mode: str, processes: int) -> dict:
    from sq_jax.configlib import from_dict
    from sq_jax.prompts.formats import get_prompt_format
    from sq_jax.sampling.generate_job import GenerateConfig, build_prompts, count_prompts, iter_shards

    cfg = from_dict(GenerateConfig, {"model": "unused", "output_dir": str(work / "out"), "shard_size": 1000,
                                     "samples_per_prompt": 5, "prompts": {"mode": "solver",
                                                                          "path": str(work / "questions" / "records")}})
    fmt = get_prompt_format("qwen")
    started = time.perf_counter()
    if mode == "list":
        prompts = build_prompts(cfg, fmt)
        requests = len(prompts) * cfg.samples_per_prompt
    else:
        shards = -(-count_prompts(cfg) * cfg.samples_per_prompt // cfg.shard_size)
        requests = sum(len(items) for _, items in iter_shards(cfg, fmt, set(range(0, shards, processes))))
    return {"mode": mode, "requests": requests, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--one", choices=["stream", "list"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="prompts-scale-"))
    if args.one:
        print(json.dumps(run_one(work, args.one, args.processes)))
        return
    write_questions(work / "questions", args.questions)
    print("| mode | questions | requests this host | seconds | peak RSS |\n|---|---:|---:|---:|---:|")
    for mode in ("stream", "list"):
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--work", str(work), "--processes",
                              str(args.processes)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"stream, process 0 of {args.processes}" if mode == "stream" else "list (before)"
        print(f"| {label} | {args.questions:,} | {r['requests']:,} | {r['seconds']} | "
              f"{r['peak_rss_mib'] / 1024:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
