"""The memory plan (train/memory_plan.py) against XLA's `compiled.memory_analysis()` of the same train step,
compiled on one CPU device from shapes (nothing runs), and the plan's kept activations against JAX's saved
residuals of the train step's loss under every remat policy: full fine-tuning and LoRA, tiny and ~100M shapes.

    python benchmarks/memory_plan.py            # the tables in the README ("Colab TPU: LoRA and the memory plan")
    python benchmarks/memory_plan.py --tables residuals --dtypes float32 bfloat16

XLA's peak = arguments + outputs - aliased (donated state) + temps. The plan is within 15% under remat `none`;
under remat `full` XLA:CPU's temps barely shrink (CPU buffer assignment), so those rows show how far the CPU
compiler is from the plan's TPU expectation rather than a check. The residuals table is that check, compiler
independent: what JAX hands the backward under each policy (tracing only).
"""

from __future__ import annotations

import argparse

from shapes import qwen2_config
from sq_jax.train.config import PROJECTIONS
from sq_jax.models.transformer import REMAT_POLICIES
from sq_jax.train.memory_check import compiled_train_bytes, saved_residual_bytes
from sq_jax.train.memory_plan import TrainShape, backward_residual_bytes, train_plan

MiB = 2**20


SIZES = {"tiny": (256, 4), "100m": (256, 2)}  # seq, micro-batch


def _shape(name: str, remat: str, rank: int | None, dtype: str = "float32") -> TrainShape:
    seq, micro = SIZES[name]
    return TrainShape(seq_len=seq, micro_batch=micro, param_dtype=dtype, remat=remat, lora_rank=rank,
                      lora_targets=PROJECTIONS if rank else ())


def memory_analysis_table(shapes: list[str], remats: list[str]) -> None:
    print("| shape | remat | training | micro x seq | XLA peak MiB | plan MiB | plan / XLA |")
    print("|---|---|---|---|---|---|---|")
    for name in shapes:
        for remat in remats:
            for rank in (None, 8):
                cfg, shape = qwen2_config(name, dtype="float32"), _shape(name, remat, rank)
                xla = compiled_train_bytes(cfg, shape)["peak"]
                plan = train_plan(cfg, shape).total
                mode = f"LoRA r{rank}" if rank else "full"
                print(f"| {name} | {remat} | {mode} | {shape.micro_batch} x {shape.seq_len} | {xla / MiB:.1f} | "
                      f"{plan / MiB:.1f} | {plan / xla:.3f} |", flush=True)


def residuals_table(shapes: list[str], dtypes: list[str]) -> None:
    print("| shape | dtype | remat | training | saved residuals MiB | plan kept MiB | plan / residuals | "
          "fixed MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in shapes:
        for dtype in dtypes:
            for remat in REMAT_POLICIES:
                for rank in (None, 8):
                    cfg, shape = qwen2_config(name, dtype=dtype), _shape(name, remat, rank, dtype)
                    saved = saved_residual_bytes(cfg, shape)
                    kept = backward_residual_bytes(cfg, shape.seq_len, remat, shape.lora_rank, shape.lora_targets)
                    kept *= shape.micro_batch * shape.seq_len
                    mode = f"LoRA r{rank}" if rank else "full"
                    print(f"| {name} | {dtype} | {remat} | {mode} | {saved['activations'] / MiB:.1f} | "
                          f"{kept / MiB:.1f} | {kept / saved['activations']:.3f} | {saved['fixed'] / MiB:.1f} |",
                          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="*", default=["tiny", "100m"])
    parser.add_argument("--remat", nargs="*", default=["none", "full"], help="for the memory_analysis table")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], help="for the residuals table")
    parser.add_argument("--tables", nargs="*", default=["memory_analysis", "residuals"])
    args = parser.parse_args()
    if "memory_analysis" in args.tables:
        memory_analysis_table(args.shapes, args.remat)
    if "residuals" in args.tables:
        print()
        residuals_table(args.shapes, args.dtypes)


if __name__ == "__main__":
    main()
