"""The question-synthesis stage with and without prefix reuse: the same pipeline stage (pre-query template, 512
questions, temperature 1.0, top-p 0.99) on the tiny model, run twice with the engine's prefix cache on and off.

    python benchmarks/synthesis_stage.py [--count 512] [--backend jetstream|raw]

Prints the stage's wall time and its generation throughput from the run report, per setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.runner import run_pipeline


def run(out: Path, count: int, backend: str, prefix_cache: int) -> dict:
    engine = {"max_slots": 64, "max_cache_length": 256, "max_prefill_length": 64, "decode_steps": 8,
              "dtype": "float32", "mesh_tensor": 1, "mesh_fsdp": -1, "prefix_cache_size": prefix_cache}
    cfg = {"output_dir": str(out), "seed": 0, "stages": {
        "tiny": {"kind": "tiny_model"},
        "questions": {"kind": "synthesize", "inputs": {"model": "tiny"},
                      "config": {"count": count, "backend": backend, "shard_size": count, "engine": engine,
                                 "sampling": {"temperature": 1.0, "top_p": 0.99, "max_tokens": 96}}}}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    report = run_pipeline(load_pipeline(path))
    stage = next(s for s in report["stages"] if s["stage"] == "questions")
    return {"seconds": stage["seconds"], "requests_per_s": stage["stats"]["last_run_requests_per_s"],
            "tokens_per_s": stage["stats"]["last_run_tokens_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--backend", choices=("jetstream", "raw"), default="jetstream")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(Path(tmp) / name, args.count, args.backend, size)
                   for name, size in (("prefix_reuse", 32), ("no_reuse", 0))}
    results["speedup"] = results["prefix_reuse"]["tokens_per_s"] / results["no_reuse"]["tokens_per_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
