"""Training throughput: sq-jax's jitted train step vs a `transformers` + torch step, same shape, batch and length.

    python benchmarks/train_throughput.py                      # CPU, the tiny 4M qwen2 shape, batch 8 x 256
    python benchmarks/train_throughput.py --shape 1b --dtype bfloat16 --batch 8 --seq 2048   # on a GPU

Prints tokens/s of both, their ratio, achieved TFLOP/s and MFU (where the device peak is known).
Run it with one visible device (no --xla_force_host_platform_device_count).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shapes import SHAPES, qwen2_config, transformers_config
from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.parallel.mesh import make_mesh
from sq_jax.train.config import OptimSection
from sq_jax.train.metrics import device_peak_tflops, training_flops_per_token
from sq_jax.train.optim import make_optimizer
from sq_jax.train.step import lm_loss, make_train_step



def bench_jax(cfg: ModelConfig, batch: int, seq: int, steps: int, warmup: int) -> dict:
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = init_model(cfg, mesh=mesh, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    tx, _ = make_optimizer(OptimSection(lr=1e-4, warmup_steps=0, schedule="constant"), steps + warmup)
    opt_state = jax.jit(tx.init)(params)
    shardings = jax.tree.map(lambda x: x.sharding, (params, opt_state))
    step = make_train_step(graphdef, tx, lm_loss, shardings, mesh)
    rng = np.random.default_rng(0)
    data = {
        "tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (1, batch, seq)), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (1, batch, seq)),
        "segment_ids": jnp.ones((1, batch, seq), jnp.int32),
        "loss_mask": jnp.ones((1, batch, seq), jnp.int32),
    }
    t0 = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        params, opt_state, metrics = step(params, opt_state, data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        params, opt_state, metrics = step(params, opt_state, data)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    return {"tokens_per_s": batch * seq * steps / elapsed, "step_ms": 1000 * elapsed / steps,
            "compile_s": compile_s, "loss": float(metrics["loss"])}


def bench_torch(cfg: ModelConfig, batch: int, seq: int, steps: int, warmup: int, device: str) -> dict:
    import torch
    import transformers

    hf_cfg = transformers_config(cfg)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(hf_cfg).to(device)
    if cfg.remat != "none":
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                              enabled=cfg.dtype == "bfloat16")

    def one_step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        one_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    sync()
    elapsed = time.perf_counter() - t0
    return {"tokens_per_s": batch * seq * steps / elapsed, "step_ms": 1000 * elapsed / steps, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--torch-device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--only", choices=("jax", "torch"), default=None,
                        help="run one side (on a GPU run each in its own process: both frameworks grab memory)")
    args = parser.parse_args()

    cfg = qwen2_config(args.shape, dtype=args.dtype, param_dtype="float32", remat=args.remat)
    device = jax.devices()[0]
    flops_per_token = training_flops_per_token(cfg, args.seq)
    peak = device_peak_tflops(device)
    result = {"device": device.device_kind, "shape": args.shape, "params": cfg.num_params(),
              "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "remat": args.remat}
    if args.only != "torch":
        result["sq_jax"] = bench_jax(cfg, args.batch, args.seq, args.steps, args.warmup)
    if args.only != "jax":
        import torch

        torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
        result["torch"] = bench_torch(cfg, args.batch, args.seq, args.steps, args.warmup, torch_device)
        result["torch"]["device"] = torch_device
        if "sq_jax" in result:
            result["ratio_sq_jax_over_torch"] = result["sq_jax"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
    for side in ("sq_jax", "torch"):
        if side in result:
            tflops = flops_per_token * result[side]["tokens_per_s"] / 1e12
            result[side]["tflops_per_s"] = tflops
            result[side]["mfu"] = tflops / peak if peak else None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
