"""Decode speed beside Google's Tunix `Sampler` and `transformers.generate`, on the same random weights.

    python -m venv /tmp/tunix-venv
    /tmp/tunix-venv/bin/pip install google-tunix==0.1.7 "jax==$(python -c 'import jax; print(jax.__version__)')"
    python benchmarks/peer_tunix.py --tunix-python /tmp/tunix-venv/bin/python      # tiny and 100m, batch 1, 8, 64

Tunix is not a dependency of sq-jax: it runs in its own environment, in a worker process this script starts
(`--tunix-worker`), which loads the same weights from a Hugging Face export and answers one generation request
per line. Every measurement alternates the sides (sq-jax, Tunix, transformers, then the reverse order: ABCCBA),
so load from other processes lands on every side alike; the table reports each side's median tokens/s, the
greedy sequences that agree with sq-jax's, and `uptime` before and after. Prompt 32, 128 new tokens, greedy,
float32; each side prefills and decodes the whole batch per call (sq-jax through its raw engine loop, one
request per slot).

Batch-1 decode is also set against the machine's memory bandwidth, read once per alternating pass as the
faster of two 1 GiB copies (XLA's multi-threaded one and numpy's): the roofline is the median reading over the
bytes one decode step must read (every weight except the embedding table, plus the KV cache at mid-generation),
so it sees the same load as the runs; the best reading is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

TUNIX_HINT = "see this script's docstring for the two commands that build a Tunix environment"


# ----------------------------------------------------------------------------------- Tunix worker (its own venv)
class _IdsTokenizer:
    """Prompts travel as space-separated token ids: no tokenizer stands between the sides."""

    def __init__(self, eos: int):
        self._eos = eos

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return None  # Tunix prepends a BOS only when this is truthy; the prompts are taken as they are

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return 0


def tunix_worker(model_dir: str) -> None:
    """Load `model_dir` into Tunix's Qwen2, then per stdin line {"prompts", "new_tokens"} print the timing."""
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen2 import model as qwen2, params as qwen2_params

    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    cfg = qwen2.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
        head_dim=hf["hidden_size"] // hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
        rope_theta=hf.get("rope_theta", hf.get("rope_parameters", {}).get("rope_theta", 10000.0)),
        norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf.get("tie_word_embeddings", False),
    )
    model = qwen2_params.create_model_from_safe_tensors(model_dir, cfg)
    eos = hf["vocab_size"] - 1
    samplers: dict[int, object] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        prompts, new_tokens = req["prompts"], req["new_tokens"]
        length = len(prompts[0])
        if length not in samplers:
            cache = sampler_lib.CacheConfig(cache_size=length + new_tokens, num_layers=cfg.num_layers,
                                            num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
            samplers[length] = sampler_lib.Sampler(model, _IdsTokenizer(eos), cache)
        sampler = samplers[length]
        texts = [" ".join(map(str, p)) for p in prompts]
        t0, c0 = time.perf_counter(), time.process_time()
        out = sampler(texts, max_generation_steps=new_tokens, max_prompt_length=length, eos_tokens=[eos])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "tokens": [np.asarray(t).tolist() for t in out.tokens]}),
              flush=True)


class TunixSide:
    def __init__(self, python: str, model_dir: str):
        if not os.path.exists(python):
            raise SystemExit(f"--tunix-python {python} does not exist; {TUNIX_HINT}")
        self._proc = subprocess.Popen([python, os.path.abspath(__file__), "--tunix-worker", model_dir],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "JAX_PLATFORMS": "cpu"})
        self._read()

    def _read(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"the Tunix worker exited ({self._proc.wait()}); {TUNIX_HINT}")

    def __call__(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, list[list[int]]]:
        self._proc.stdin.write(json.dumps({"prompts": prompts, "new_tokens": new_tokens}) + "\n")
        self._proc.stdin.flush()
        out = self._read()
        return out["seconds"], out["cpu_seconds"], out["tokens"]

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------- the sides in this venv
class SqJaxSide:
    def __init__(self, model, batch: int, prompt_len: int, new_tokens: int, decode_steps: int):
        from sq_jax.sampling.engine import Engine

        cfg = model.config
        self.engine = Engine(model, stop_ids=[cfg.vocab_size - 1], max_slots=batch,
                             max_cache_length=prompt_len + new_tokens + 8, max_prefill_length=max(prompt_len, 16),
                             decode_steps=decode_steps, prefix_cache_size=0)

    def __call__(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, list[list[int]]]:
        from sq_jax.sampling.loop import Request, run_loop
        from sq_jax.sampling.sampling import SamplingParams

        reqs = [Request(p, SamplingParams(temperature=0.0, max_tokens=new_tokens)) for p in prompts]
        t0, c0 = time.perf_counter(), time.process_time()
        outs = run_loop(self.engine, reqs)
        return time.perf_counter() - t0, time.process_time() - c0, [o.token_ids for o in outs]


class TransformersSide:
    def __init__(self, model_dir: str):
        import torch
        import transformers

        self._torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def __call__(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, list[list[int]]]:
        torch = self._torch
        ids = torch.tensor(prompts)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0, time.process_time() - c0, out[:, ids.shape[1]:].tolist()


# ------------------------------------------------------------------------------------------------ measurement
class CopyBandwidth:
    """Bytes per second of a large copy (read + write counted): the faster of XLA's multi-threaded in-place
    elementwise pass and numpy's copy, each into memory already touched (no page faults timed)."""

    def __init__(self, megabytes: int = 1024):
        import jax
        import jax.numpy as jnp

        n = megabytes * 2**20 // 4
        self._bytes = 2 * n * 4
        self._pass = jax.jit(lambda x: x + 1.0, donate_argnums=0)
        self._x = self._pass(jnp.zeros(n, jnp.float32)).block_until_ready()
        self._a, self._b = np.ones(n, np.float32), np.zeros(n, np.float32)

    def __call__(self, repeats: int = 3) -> tuple[float, float]:
        """(bytes per second, bytes per CPU-second of this process): each the best of `repeats` passes."""
        best, best_cpu = 0.0, 0.0
        for _ in range(repeats):
            for copy in (lambda: self._pass(self._x).block_until_ready(), lambda: np.copyto(self._b, self._a)):
                t0, c0 = time.perf_counter(), time.process_time()
                out = copy()
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                if out is not None:
                    self._x = out
                best, best_cpu = max(best, self._bytes / seconds), max(best_cpu, self._bytes / max(cpu, 1e-9))
        return best, best_cpu


def decode_bytes_per_token(cfg, prompt_len: int, new_tokens: int) -> int:
    """What one batch-1 decode step must read: every weight but the embedding table, and the KV cache."""
    item = np.dtype(cfg.dtype).itemsize
    weights = cfg.num_params() - (cfg.vocab_size * cfg.hidden_size if not cfg.tie_word_embeddings else 0)
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * (prompt_len + new_tokens // 2)
    return (weights + kv) * item


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def alternate(sides: dict, prompts: list[list[int]], new_tokens: int, rounds: int,
              bandwidth: CopyBandwidth | None = None) -> dict:
    """Warm each side, then `rounds` passes in ABC then CBA order; every side's tokens/s and its tokens (and,
    given `bandwidth`, one copy-bandwidth reading per pass, so the roofline sees the same load as the sides)."""
    names = list(sides)
    for name in names:
        sides[name](prompts, new_tokens)  # compile and warm up
    runs: dict[str, list[float]] = {name: [] for name in names}
    per_cpu_s: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list[list[int]]] = {}
    readings: list[float] = []
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, cpu_seconds, out = sides[name](prompts, new_tokens)
            count = sum(len(o) for o in out)
            runs[name].append(count / seconds)
            per_cpu_s[name].append(count / cpu_seconds)
            tokens[name] = out
        if bandwidth is not None:
            readings.append(bandwidth())
    return {"runs": runs, "per_cpu_s": per_cpu_s, "tokens": tokens, "bandwidth": readings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tunix-worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--tunix-python", default="/tmp/tunix-venv/bin/python")
    parser.add_argument("--shapes", default="tiny,100m")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32, help="decode steps per engine call")
    parser.add_argument("--rounds", type=int, default=4, help="alternating passes per cell (even: ABCCBA...)")
    parser.add_argument("--skip", default="", help="comma list of sides to skip: tunix, transformers")
    args = parser.parse_args()
    if args.tunix_worker:
        return tunix_worker(args.tunix_worker)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from shapes import qwen2_config
    from sq_jax.models.hf_io import save_pretrained
    from sq_jax.models.init import init_model

    skip = set(filter(None, args.skip.split(",")))
    bandwidth = CopyBandwidth()
    print(json.dumps({"uptime_start": uptime(), "copy_bytes_per_s_and_per_cpu_s": bandwidth(repeats=5)}),
          flush=True)
    table = []
    for shape in args.shapes.split(","):
        cfg = qwen2_config(shape, dtype="float32", param_dtype="float32")
        model = init_model(cfg, seed=0)
        with tempfile.TemporaryDirectory() as model_dir:
            save_pretrained(model, model_dir)
            peers = {} if "tunix" in skip else {"tunix": TunixSide(args.tunix_python, model_dir)}
            if "transformers" not in skip:
                peers["transformers"] = TransformersSide(model_dir)
            try:
                for batch in (int(b) for b in args.batches.split(",")):
                    rng = np.random.default_rng(batch)
                    prompts = rng.integers(1, cfg.vocab_size - 1, (batch, args.prompt_len)).tolist()
                    sides = {"sq_jax": SqJaxSide(model, batch, args.prompt_len, args.new_tokens,
                                                 args.decode_steps), **peers}
                    load_before = uptime()
                    result = alternate(sides, prompts, args.new_tokens, args.rounds,
                                       bandwidth if batch == 1 else None)
                    row = {"shape": shape, "params": cfg.num_params(), "batch": batch,
                           "median_tokens_per_s": {k: statistics.median(v) for k, v in result["runs"].items()},
                           "runs_tokens_per_s": result["runs"],
                           # Tokens per CPU-second of the side's process (all its threads): the work each side
                           # does, which other processes' load disturbs far less than wall time.
                           "median_tokens_per_cpu_s": {k: statistics.median(v) for k, v in
                                                       result["per_cpu_s"].items()},
                           "greedy_sequences_equal_to_sq_jax": {
                               k: sum(a == b for a, b in zip(v, result["tokens"]["sq_jax"]))
                               for k, v in result["tokens"].items() if k != "sq_jax"},
                           "uptime_before": load_before, "uptime_after": uptime()}
                    if batch == 1:  # the median reading against the median runs: both under the same load
                        step_bytes = decode_bytes_per_token(cfg, args.prompt_len, args.new_tokens)
                        wall, cpu = zip(*result["bandwidth"])
                        row["copy_bytes_per_s"], row["copy_bytes_per_cpu_s"] = wall, cpu
                        row["roofline_tokens_per_s"] = statistics.median(wall) / step_bytes
                        row["roofline_tokens_per_s_best_copy"] = max(wall) / step_bytes
                        row["fraction_of_roofline"] = {k: v / row["roofline_tokens_per_s"] for k, v in
                                                       row["median_tokens_per_s"].items()}
                        # The same in CPU time: bytes a decode moves per CPU-second against a copy's.
                        row["fraction_of_roofline_per_cpu_s"] = {
                            k: v * step_bytes / statistics.median(cpu)
                            for k, v in row["median_tokens_per_cpu_s"].items()}
                    table.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if "tunix" in peers:
                    peers["tunix"].close()
    print(markdown(table))
    print("uptime at the end:", uptime())


def markdown(table: list[dict]) -> str:
    lines = ["| shape | batch | sq-jax tok/s | Tunix tok/s | transformers tok/s | sq-jax / Tunix | "
             "sq-jax / roofline tok/s | greedy equal (Tunix, transformers) |", "|---|---|---|---|---|---|---|---|"]
    for row in table:
        med = row["median_tokens_per_s"]
        get = lambda k: f"{med[k]:,.0f}" if k in med else "n/a"  # noqa: E731
        ratio = f"{med['sq_jax'] / med['tunix']:.2f}x" if "tunix" in med else "n/a"
        roof = (f"{row['fraction_of_roofline']['sq_jax']:.0%} of {row['roofline_tokens_per_s']:,.0f}"
                if "fraction_of_roofline" in row else "")
        equal = row["greedy_sequences_equal_to_sq_jax"]
        lines.append(f"| {row['shape']} ({row['params'] / 1e6:.0f}M) | {row['batch']} | {get('sq_jax')} | "
                     f"{get('tunix')} | {get('transformers')} | {ratio} | {roof} | "
                     f"{equal.get('tunix', 'n/a')}, {equal.get('transformers', 'n/a')} of {row['batch']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
