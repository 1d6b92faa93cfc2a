"""The memory plan (train/memory_plan.py) against XLA's `compiled.memory_analysis()` of the same train step,
compiled on one CPU device from shapes (nothing runs): full fine-tuning and LoRA, tiny and ~100M shapes.

    python benchmarks/memory_plan.py            # the table in the README ("Colab TPU: LoRA and the memory plan")

XLA's peak = arguments + outputs - aliased (donated state) + temps. The plan is within 15% under remat `none`;
under remat `full` XLA:CPU's temps barely shrink (CPU buffer assignment), so those rows show how far the CPU
compiler is from the plan's TPU expectation rather than a check.
"""

from __future__ import annotations

import argparse

from shapes import qwen2_config
from sq_jax.train.config import PROJECTIONS
from sq_jax.train.memory_check import compiled_train_bytes
from sq_jax.train.memory_plan import TrainShape, train_plan

MiB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="*", default=["tiny", "100m"])
    parser.add_argument("--remat", nargs="*", default=["none", "full"])
    args = parser.parse_args()
    print(f"| shape | remat | training | micro x seq | XLA peak MiB | plan MiB | plan / XLA |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        seq, micro = (256, 4) if name == "tiny" else (256, 2)
        for remat in args.remat:
            for rank in (None, 8):
                cfg = qwen2_config(name, dtype="float32")
                shape = TrainShape(seq_len=seq, micro_batch=micro, param_dtype="float32", remat=remat,
                                   lora_rank=rank, lora_targets=PROJECTIONS if rank else ())
                xla = compiled_train_bytes(cfg, shape)["peak"]
                plan = train_plan(cfg, shape).total
                mode = f"LoRA r{rank}" if rank else "full"
                print(f"| {name} | {remat} | {mode} | {micro} x {seq} | {xla / MiB:.1f} | {plan / MiB:.1f} | "
                      f"{plan / xla:.3f} |", flush=True)


if __name__ == "__main__":
    main()
