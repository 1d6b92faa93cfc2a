"""Load on `sq-jax serve`'s OpenAI API: concurrent requests (streaming and not, n 1 and 5, some bad) from the
official `openai` async client on 127.0.0.1, against the offline driver's throughput on the same requests.

    python benchmarks/serve_load.py                       # the tiny model, 1,000 requests
    python benchmarks/serve_load.py --model DIR --requests 200 --max-tokens 64

The server runs as a subprocess (`sq-jax serve`, loopback only); the offline driver runs the same engine requests
(same prompts, seeds, max_tokens) in this process while the server idles, alternating with the server's loads
(offline, server, offline, server, ...), and each load is compared with the mean of the offline runs on either
side of it; the table has a row per round and the median. The CPU seconds of the server process and of this
process (the load generator) during each load, and of each offline run, are reported: on a small machine the
client's share is CPU the server did not have.
Seeded sampling makes both produce the same tokens, so tokens/s compare like for like; the token streams are
also checked to be equal. Bounded: every request has a timeout and the whole load a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

SERVE = ["--dtype", "float32", "--max-slots", "64", "--max-cache-length", "512", "--max-prefill-length", "384",
         "--decode-steps", "8", "--max-queue", "8192"]
BAD = [{"top_p": 0}, {"temperature": -1.0}, {"model": "no-such-model"}, {"prompt": "seven " * 500}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(count: int, prompts: list[str], seed: int) -> list[dict]:
    """The request mix: ~half streaming, ~20% with n=5, 5% bad (cycling through BAD)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        req = {"model": "tiny", "prompt": prompts[i % len(prompts)], "temperature": 1.0, "top_p": 0.95,
               "seed": 10 * i, "n": 5 if rng.random() < 0.2 else 1, "stream": rng.random() < 0.5}
        if i % 20 == 7:
            req |= BAD[(i // 20) % len(BAD)]
            req["bad"] = True
        out.append(req)
    return out


async def one(client, req: dict, max_tokens: int, timeout_s: float) -> dict:
    import openai

    body = {k: v for k, v in req.items() if k not in ("bad", "stream")}
    start = time.perf_counter()
    first = None
    tokens: dict[int, list[int]] = {}
    try:
        if req["stream"]:
            stream = await client.completions.create(**body, max_tokens=max_tokens, stream=True, timeout=timeout_s,
                                                     extra_body={"return_token_ids": True})
            async for chunk in stream:
                for choice in chunk.choices:
                    if first is None and choice.text:
                        first = time.perf_counter() - start
                    if choice.finish_reason:
                        tokens[choice.index] = choice.model_extra["token_ids"]
        else:
            reply = await client.completions.create(**body, max_tokens=max_tokens, timeout=timeout_s,
                                                    extra_body={"return_token_ids": True})
            tokens = {c.index: c.model_extra["token_ids"] for c in reply.choices}
        status = 200
    except openai.APIStatusError as e:
        status = e.status_code
    except (openai.APIConnectionError, openai.APITimeoutError) as e:
        status = f"{type(e).__name__}"
    latency = time.perf_counter() - start
    return {"status": status, "latency": latency, "ttft": first if first is not None else latency,
            "stream": req["stream"], "bad": req.get("bad", False), "tokens": tokens}


async def load(base_url: str, reqs: list[dict], max_tokens: int, timeout_s: float, deadline_s: float) -> tuple:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    start = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(one(client, r, max_tokens, timeout_s) for r in reqs)),
                                     deadline_s)
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process `pid` (Linux /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Offline:
    """The offline driver on the same engine settings as the server, compiled once, run on the same requests."""

    def __init__(self, model: str, reqs: list[dict], max_tokens: int):
        from sq_jax.sampling.loop import Request
        from sq_jax.sampling.offline import run_driver
        from sq_jax.sampling.sampling import SamplingParams
        from sq_jax.sampling.engine_factory import EngineSettings, build_engine

        self.settings = EngineSettings(max_slots=64, max_cache_length=512, max_prefill_length=384, decode_steps=8,
                                       dtype="float32", mesh_tensor=1, mesh_fsdp=1)
        loaded = build_engine(model, self.settings, SamplingParams(max_tokens=max_tokens))
        self.engine, tok = loaded.engine, loaded.tokenizer
        self.requests = [Request(tok(r["prompt"], add_special_tokens=False)["input_ids"],
                                 SamplingParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=r["seed"] + j))
                         for r in reqs if not r.get("bad") for j in range(r["n"])]
        self._run = run_driver
        run_driver(self.engine, self.requests[:128])  # compile outside the clock, as the warmed-up server is

    def run(self) -> tuple[list[list[int]], float]:
        start, cpu = time.perf_counter(), _cpu_s()
        done = self._run(self.engine, self.requests, window=4 * self.settings.max_slots)
        self.cpu_s = _cpu_s() - cpu
        return [c.token_ids for c in done], time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _row(results: list[dict], wall: float, cpu: tuple[float, float], offline: list[tuple[list, float, float]],
         metrics: str) -> dict:
    """One round: the server's load against the offline runs just before and after it (their mean)."""
    valid = [r for r in results if not r["bad"]]
    bad = [r for r in results if r["bad"]]
    failures = [r["status"] for r in valid if r["status"] != 200]
    served_tokens = [r["tokens"][j] for r in valid if r["status"] == 200 for j in sorted(r["tokens"])]
    total = sum(len(t) for t in served_tokens)
    stream_ttft = [r["ttft"] for r in valid if r["stream"] and r["status"] == 200]
    offline_tps = [sum(map(len, tokens)) / w for tokens, w, _ in offline]
    row = {
        "requests": len(results), "valid": len(valid), "bad": len(bad),
        "valid_failures": len(failures), "bad_answered_400": sum(r["status"] == 400 for r in bad),
        "server_wall_s": wall, "requests_per_s": len(valid) / wall, "server_tokens_per_s": total / wall,
        "offline_tokens_per_s": float(np.mean(offline_tps)), "offline_tokens_per_s_before_after": offline_tps,
        "offline_cpu_s_before_after": [c for _, _, c in offline], "server_cpu_s": cpu[0], "client_cpu_s": cpu[1],
        "cpu_s_available": wall * (os.cpu_count() or 1),
        "ttft_p50_s": _pct(stream_ttft, 50), "ttft_p99_s": _pct(stream_ttft, 99),
        "latency_p50_s": _pct([r["latency"] for r in valid], 50),
        "latency_p99_s": _pct([r["latency"] for r in valid], 99),
        "tokens_equal_offline": all(served_tokens == tokens for tokens, _, _ in offline), "generated_tokens": total,
        "prefix_hits_total": next((line.split()[-1] for line in metrics.splitlines()
                                   if line.startswith("sq_jax_prefix_hits_total")), None),
        "load_average": os.getloadavg(),
    }
    row["server_vs_offline"] = row["server_tokens_per_s"] / row["offline_tokens_per_s"]
    if failures:
        row["failure_statuses"] = sorted(set(map(str, failures)))
    return row


def _print_table(rows: list[dict]) -> None:
    print("\n| round | requests (valid / bad) | valid failed | bad -> 400 | req/s | TTFT p50 / p99 (stream) | "
          "latency p50 / p99 | tokens/s served | tokens/s offline (before / after) | served / offline | "
          "same tokens | CPU s server / client / wall x cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        before, after = row["offline_tokens_per_s_before_after"]
        print(f"| {i} | {row['requests']} ({row['valid']} / {row['bad']}) | {row['valid_failures']} | "
              f"{row['bad_answered_400']} / {row['bad']} | {row['requests_per_s']:.1f} | "
              f"{row['ttft_p50_s']:.2f} / {row['ttft_p99_s']:.2f} s | {row['latency_p50_s']:.2f} / "
              f"{row['latency_p99_s']:.2f} s | {row['server_tokens_per_s']:.0f} | {before:.0f} / {after:.0f} | "
              f"{row['server_vs_offline']:.2f} | {row['tokens_equal_offline']} | "
              f"{row['server_cpu_s']:.0f} / {row['client_cpu_s']:.0f} / {row['cpu_s_available']:.0f} |")
    print(f"\nmedian served / offline over {len(rows)} rounds: "
          f"{float(np.median([r['server_vs_offline'] for r in rows])):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir (default: a fresh tiny model)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="server loads, each between two offline runs (offline, server, offline, server, ...)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds per request (all 1,000 are sent at once: the last wait for the whole load)")
    parser.add_argument("--deadline", type=float, default=1500.0, help="seconds for the whole load")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    from sq_jax.prompts.formats import PROMPT_FORMATS

    model = args.model
    if model is None:
        from sq_jax.toy.tiny import build_tiny

        model = str(build_tiny(Path(tempfile.mkdtemp()) / "tiny"))
    fmt = PROMPT_FORMATS["qwen"]
    questions = [f"What is {a} plus {b}?" for a in range(3, 13) for b in range(2, 7)]
    prompts = [fmt.pre_query_template] + [fmt.solver_prompt(q) for q in questions]
    reqs = plan(args.requests, prompts, seed=0)

    bench = Offline(model, reqs, args.max_tokens)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SQ_JAX_API_KEY"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    cmd = [sys.executable, "-m", "sq_jax.cli", "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
           "--http-port", str(port), "--served-model-name", "tiny", "--max-tokens", str(args.max_tokens), *SERVE]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    rows = []
    try:
        print(proc.stdout.readline().strip(), file=sys.stderr)
        warm = [dict(r, stream=False) for r in reqs if not r.get("bad")][:128]
        asyncio.run(load(base, warm, args.max_tokens, args.timeout, args.deadline))  # compile outside the clock
        # The idle server only waits on its queues, so the offline runs between its loads have the CPU to
        # themselves; alternating cancels the machine's drift (offline alone varied 10-20% run to run).
        offline = [(*bench.run(), bench.cpu_s)]
        for _ in range(args.rounds):
            server_cpu, client_cpu = _cpu_s(proc.pid), _cpu_s()
            results, wall = asyncio.run(load(base, reqs, args.max_tokens, args.timeout, args.deadline))
            cpu = (_cpu_s(proc.pid) - server_cpu, _cpu_s() - client_cpu)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
            offline.append((*bench.run(), bench.cpu_s))
            rows.append(_row(results, wall, cpu, offline[-2:], metrics))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(json.dumps(rows, indent=2))
    _print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
