"""Generation throughput: the raw engine loop, the offline JetStream driver and `transformers` `generate`.

    python benchmarks/generate_throughput.py                               # CPU, the tiny 4M qwen2 shape
    python benchmarks/generate_throughput.py --shape 1b --dtype bfloat16   # on a GPU (torch on the same GPU)

Same shape, prompts and batch sizes (1, 8, 64) on every side; greedy; output tokens/s. Also: the prefix-reuse
speed-up of the question-synthesis workload (every request shares one prompt), where the time goes (device step,
host transfer, detokenization, Python), and for batch 1 the fraction of the memory-bandwidth roofline.
Run it with one visible device (no --xla_force_host_platform_device_count).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from shapes import SHAPES, qwen2_config, transformers_config
from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.sampling.loop import LoopStats, Request, run_loop
from sq_jax.sampling.sampling import SamplingParams

HBM_BYTES_PER_S = {"NVIDIA H100": 3.35e12, "NVIDIA H200": 4.8e12, "TPU v5 lite": 0.82e12, "TPU v5p": 2.76e12,
                   "TPU v4": 1.2e12}


def prompts(cfg: ModelConfig, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, cfg.vocab_size - 1, length).tolist() for _ in range(batch)]


def make_engine(model, cfg: ModelConfig, slots: int, prompt_len: int, new_tokens: int, steps: int,
                prefix_cache: int = 32, jetstream: bool = True):
    # The last id stands in for EOS; a random model almost never emits it, so every request runs to max_tokens.
    kwargs = dict(stop_ids=[cfg.vocab_size - 1], max_slots=slots, max_cache_length=prompt_len + new_tokens + 8,
                  max_prefill_length=max(prompt_len, 16), decode_steps=steps, prefix_cache_size=prefix_cache)
    if not jetstream:  # machines without google-jetstream (the GPU box) run the raw engine only
        from sq_jax.sampling.engine import Engine

        return Engine(model, **kwargs)
    from sq_jax.sampling.jetstream_compat import jetstream_engine_class

    return jetstream_engine_class()(model, tiny_tokenizer(), default_sampling=SamplingParams(), **kwargs)


def timed(fn, repeats: int = 3, engine=None):
    fn()  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        if engine is not None:
            engine.clear_prefix_cache()  # the timed run takes the same code paths as the warm-up
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_raw(engine, reqs: list[Request]) -> dict:
    stats = LoopStats()

    def go():
        stats.__init__()
        return run_loop(engine, reqs, stats=stats)

    seconds, outs = timed(go, engine=engine)
    tokens = sum(len(o.token_ids) for o in outs)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "device_wait_s": stats.device_wait_s, "python_host_s": stats.host_s,
            "detokenize_s": detokenize_seconds([o.token_ids for o in outs])}


_TOKENIZER = []


def tiny_tokenizer():
    """The tiny default's byte-level BPE (for detokenization timing and the JetStream engine's tokenizer hook)."""
    if not _TOKENIZER:
        from sq_jax.toy.problems import generate_problems
        from sq_jax.toy.tokenizer import train_tiny_tokenizer

        _TOKENIZER.append(train_tiny_tokenizer([p.question for p in generate_problems(2000)]))
    return _TOKENIZER[0]


def detokenize_seconds(outputs: list[list[int]]) -> float:
    """Time to decode the outputs with the tiny default's tokenizer (ids folded into its vocabulary)."""
    tok = tiny_tokenizer()
    t0 = time.perf_counter()
    for ids in outputs:
        tok.decode([i % len(tok) for i in ids])
    return time.perf_counter() - t0


def bench_driver(engine, reqs: list[Request]) -> dict:
    from sq_jax.sampling.offline import run_driver

    seconds, outs = timed(lambda: run_driver(engine, reqs), engine=engine)
    tokens = sum(len(o.token_ids) for o in outs)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}


def device_breakdown(engine, reqs: list[Request]) -> dict:
    """Pure device time per decode block, and the host transfer of its results."""
    state = engine.init_decode_state()
    for slot, r in enumerate(reqs[: engine.max_slots]):
        state = engine.insert(engine.prefill_request(r.token_ids, r.sampling), state, slot)
    state, result = engine.decode_block(state)
    jax.block_until_ready(result)
    n = 5
    t0 = time.perf_counter()
    for _ in range(n):
        state, result = engine.decode_block(state)
        jax.block_until_ready(result)
    step = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        state, result = engine.decode_block(state)
        jax.block_until_ready(result)
        np.asarray(result)
    transfer = (time.perf_counter() - t0) / n - step
    return {"device_s_per_token_step": step / engine.decode_steps,
            "host_transfer_s_per_block": max(transfer, 0.0)}


def bench_torch(cfg: ModelConfig, batch_prompts: list[list[int]], new_tokens: int, device: str, dtype: str) -> dict:
    import torch
    import transformers

    hf_cfg = transformers_config(cfg)
    torch.manual_seed(0)
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = transformers.Qwen2ForCausalLM(hf_cfg).to(device=device, dtype=torch_dtype).eval()
    ids = torch.tensor(batch_prompts, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def go():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        sync()
        return out

    seconds, out = timed(go)
    tokens = (out.shape[1] - ids.shape[1]) * out.shape[0]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": int(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--waves", type=int, default=4,
                        help="requests per slot for the engine and driver: sustained continuous batching")
    parser.add_argument("--skip", default="", help="comma list of sides to skip: raw, driver, torch, prefix")
    parser.add_argument("--torch-device", default=None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    cfg = qwen2_config(args.shape, dtype=args.dtype, param_dtype=args.dtype)
    model = init_model(cfg, seed=0)
    device = jax.devices()[0]
    report: dict = {"device": device.device_kind, "shape": args.shape, "params": cfg.num_params(),
                    "dtype": args.dtype, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                    "decode_steps": args.decode_steps, "batches": {}}
    for batch in [int(b) for b in args.batches.split(",")]:
        batch_prompts = prompts(cfg, batch * args.waves, args.prompt_len, seed=batch)
        reqs = [Request(p, SamplingParams(temperature=0.0, max_tokens=args.new_tokens)) for p in batch_prompts]
        batch_prompts = batch_prompts[:batch]  # transformers generates one batch of `batch` rows
        engine = make_engine(model, cfg, batch, args.prompt_len, args.new_tokens, args.decode_steps,
                             jetstream="driver" not in skip)
        row: dict = {}
        if "raw" not in skip:
            row["raw_engine"] = bench_raw(engine, reqs)
            row["raw_engine"].update(device_breakdown(engine, reqs))
        if "driver" not in skip:
            row["jetstream_driver"] = bench_driver(engine, reqs)
        if "torch" not in skip:
            import torch

            torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
            row["transformers"] = bench_torch(cfg, batch_prompts, args.new_tokens, torch_device, args.dtype)
        if "raw_engine" in row and "transformers" in row:
            row["raw_over_transformers"] = row["raw_engine"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        if "raw_engine" in row and "jetstream_driver" in row:
            row["driver_over_raw"] = row["jetstream_driver"]["tokens_per_s"] / row["raw_engine"]["tokens_per_s"]
        if batch == 1 and "raw_engine" in row:
            bandwidth = next((v for k, v in HBM_BYTES_PER_S.items() if device.device_kind.startswith(k)), None)
            if bandwidth:
                itemsize = np.dtype(args.dtype if args.dtype != "bfloat16" else "float16").itemsize
                kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * (args.prompt_len + args.new_tokens / 2)
                bytes_per_token = (cfg.num_params() + kv) * itemsize
                roofline = bandwidth / bytes_per_token
                row["roofline_tokens_per_s"] = roofline
                row["fraction_of_roofline_device_step"] = 1 / row["raw_engine"]["device_s_per_token_step"] / roofline
                row["fraction_of_roofline_end_to_end"] = row["raw_engine"]["tokens_per_s"] / roofline
        report["batches"][batch] = row
        print(json.dumps({batch: row}), flush=True)

    if "prefix" not in skip:
        # Question synthesis: 64 requests share one long prompt; the prefix cache prefills it once.
        shared = prompts(cfg, 1, 256, seed=99)[0]
        reqs = [Request(shared, SamplingParams(temperature=1.0, top_p=0.99, max_tokens=16, seed=s)) for s in range(64)]
        timings = {}
        for name, size in (("prefix_reuse", 32), ("no_reuse", 0)):
            engine = make_engine(model, cfg, 64, 256, 16, args.decode_steps, prefix_cache=size,
                                 jetstream="driver" not in skip)
            timings[name] = bench_raw(engine, reqs)["seconds"]
        report["prefix_reuse"] = {**timings, "speedup": timings["no_reuse"] / timings["prefix_reuse"]}
        print(json.dumps({"prefix_reuse": report["prefix_reuse"]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
