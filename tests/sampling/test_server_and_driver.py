"""JetStream paths: the offline driver and `sq-jax serve` give the same seeded outputs as the raw loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sq_jax.models.tiny import build_tiny
from sq_jax.models.tokenizer import PROMPT_FORMATS, encode_prompt
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams
from sq_jax.sampling.server import EngineSettings, build_engine

SETTINGS = EngineSettings(max_slots=8, max_cache_length=128, max_prefill_length=64, decode_steps=4, dtype="float32",
                          mesh_tensor=1, mesh_fsdp=-1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine(tiny):
    return build_engine(str(tiny), SETTINGS, SamplingParams(max_tokens=16))


def requests(tokenizer, n):
    fmt = PROMPT_FORMATS["qwen"]
    prompts = [fmt.pre_query_template, fmt.solver_prompt("What is 2 plus 3?")]
    return [Request(encode_prompt(tokenizer, prompts[i % 2]),
                    SamplingParams(temperature=[1.0, 0.0, 0.7][i % 3], top_p=0.95, max_tokens=12, seed=i))
            for i in range(n)]


def test_offline_driver_matches_raw_loop_and_survives_a_failing_request(engine):
    from sq_jax.sampling.offline import run_driver

    reqs = requests(engine.hf_tokenizer, 20)
    reqs.insert(5, Request(list(range(3, 200)), SamplingParams(max_tokens=4)))  # longer than the prefill limit
    raw = run_loop(engine, reqs)
    driven = run_driver(engine, reqs, window=6)
    assert driven[5].finish_reason == "error" and "max_prefill_length=64" in driven[5].error
    assert [c.token_ids for c in driven] == [c.token_ids for c in raw]
    assert sum(len(c.token_ids) for c in driven) > 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_64_concurrent_requests_then_shuts_down(tiny, engine):
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc
    import grpc

    from sq_jax.sampling.client import Client, make_request

    port = _free_port()
    cmd = [sys.executable, "-m", "sq_jax.cli", "serve", "--model", str(tiny), "--port", str(port),
           "--dtype", "float32", "--max-slots", "8", "--max-cache-length", "128", "--max-prefill-length", "64",
           "--decode-steps", "4", "--max-tokens", "16"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert f"on 127.0.0.1:{port}" in line, proc.stderr.read()[-3000:]
        client = Client(f"127.0.0.1:{port}")
        deadline = time.time() + 60
        while not client.health():
            assert time.time() < deadline
            time.sleep(0.2)
        reqs = requests(engine.hf_tokenizer, 64)
        expected = [c.token_ids for c in run_loop(engine, reqs)]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = jetstream_pb2_grpc.OrchestratorStub(channel)  # JetStream's own generated stub

        def via_stub(request):
            ids = []
            for response in stub.Decode(make_request(request.token_ids, request.sampling), timeout=120):
                ids += response.stream_content.samples[0].token_ids
            return ids

        with ThreadPoolExecutor(64) as pool:
            ours = list(pool.map(lambda r: client.generate(r.token_ids, r.sampling).token_ids, reqs))
            theirs = list(pool.map(via_stub, reqs))
        assert ours == expected and theirs == expected
        text = client.generate(PROMPT_FORMATS["qwen"].pre_query_template, reqs[0].sampling)
        assert text.token_ids == expected[0] and text.text == engine.hf_tokenizer.decode(expected[0])
        with pytest.raises(grpc.RpcError, match="top_p must be in"):
            list(stub.Decode(jetstream_pb2.DecodeRequest(
                token_content=jetstream_pb2.DecodeRequest.TokenContent(token_ids=[1, 2]), max_tokens=4,
                session_cache=json.dumps({"sq_jax": {"top_p": 0}})), timeout=60))
        assert client.generate(reqs[1].token_ids, reqs[1].sampling).token_ids == expected[1]  # still serving
        client.close()
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read()[-3000:]
