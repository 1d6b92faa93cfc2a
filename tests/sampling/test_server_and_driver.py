"""JetStream paths and `sq-jax serve`: the offline driver and both fronts (gRPC, OpenAI HTTP through the official
`openai` client) give the raw loop's seeded outputs, refuse bad requests at once, free abandoned slots and stop
promptly on SIGTERM. One server subprocess for the module (compiled once); its last test stops it."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from sq_jax.models.tokenizer import encode_prompt
from sq_jax.prompts.formats import PROMPT_FORMATS
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams
from sq_jax.sampling.engine_factory import EngineSettings, build_engine
from sq_jax.toy.tiny import build_tiny

SETTINGS = EngineSettings(max_slots=8, max_cache_length=512, max_prefill_length=384, decode_steps=4, dtype="float32",
                          mesh_tensor=1, mesh_fsdp=-1)
SERVE_FLAGS = ["--dtype", "float32", "--max-slots", "8", "--max-cache-length", "512", "--max-prefill-length", "384",
               "--decode-steps", "4", "--max-tokens", "16", "--max-queue", "64", "--shutdown-grace", "0.5",
               "--served-model-name", "tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny):
    return build_engine(str(tiny), SETTINGS, SamplingParams(max_tokens=16))


@pytest.fixture(scope="module")
def engine(loaded):
    return loaded.engine


def requests(tokenizer, n):
    fmt = PROMPT_FORMATS["qwen"]
    prompts = [fmt.pre_query_template, fmt.solver_prompt("What is 2 plus 3?")]
    return [Request(encode_prompt(tokenizer, prompts[i % 2]),
                    SamplingParams(temperature=[1.0, 0.0, 0.7][i % 3], top_p=0.95, max_tokens=12, seed=i))
            for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Served:
    proc: subprocess.Popen
    grpc: str
    http: str

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.url("/metrics"), timeout=30).read().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}

    def openai(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url("/v1"), api_key="unused", max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def served(tiny):
    grpc_port, http_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "sq_jax.cli", "serve", "--model", str(tiny), "--port", str(grpc_port),
           "--http-port", str(http_port), *SERVE_FLAGS]
    env = {k: v for k, v in os.environ.items() if k != "SQ_JAX_API_KEY"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert f"gRPC on 127.0.0.1:{grpc_port}" in line and f"http://127.0.0.1:{http_port}/v1" in line, \
            proc.stderr.read()[-3000:]
        yield Served(proc, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_offline_driver_matches_raw_loop_and_survives_a_failing_request(engine):
    from sq_jax.sampling.offline import run_driver

    reqs = requests(engine.hf_tokenizer, 20)
    reqs.insert(5, Request(list(range(3, 400)), SamplingParams(max_tokens=4)))  # longer than the prefill limit
    reqs.insert(7, Request([3, 10_000_000], SamplingParams(max_tokens=4)))  # not a token id
    raw = run_loop(engine, reqs)
    driven = run_driver(engine, reqs, window=6)
    assert driven[5].finish_reason == "error" and "max_prefill_length=384" in driven[5].error
    assert driven[7].finish_reason == "error" and "10000000 at position 1" in driven[7].error
    assert [c.token_ids for c in driven] == [c.token_ids for c in raw]
    assert sum(len(c.token_ids) for c in driven) > 100


class _LeavingChannel:
    """A return channel whose client leaves after its first tokens (what a disconnect does to a gRPC context)."""

    def __init__(self):
        self.tokens, self.left, self.done = [], False, threading.Event()

    def add_result(self, samples):
        self.tokens += samples[0].token_ids
        self.left = True

    def cancelled(self):
        return self.left

    def close(self):
        self.done.set()

    def set_exception(self, error):
        self.done.set()


def test_a_cancelled_request_frees_its_slot_at_the_next_decode_block(engine):
    from sq_jax.sampling.jetstream_compat import jetstream, make_driver

    js = jetstream()
    driver = make_driver(engine)
    try:
        prompt = requests(engine.hf_tokenizer, 1)[0].token_ids
        before = engine._blocks
        channels = [_LeavingChannel() for _ in range(engine.max_slots)]
        for channel in channels:  # every slot taken by a request for 400 tokens (100 blocks) whose client leaves
            driver.place_request_on_prefill_queue(js.orchestrator.ActiveRequest(
                max_tokens=400, return_channel=channel, prefill_content=list(prompt),
                history_path=json.dumps({"sq_jax": {"temperature": 0.0}}), is_client_side_tokenization=True))
        deadline = time.monotonic() + 60
        while not all(c.left for c in channels) or driver._generate_slots[0].qsize() < engine.max_slots - 1:
            # (an idle generate thread holds one free slot while it waits for work)
            assert time.monotonic() < deadline, "abandoned requests still hold their slots"
            time.sleep(0.01)
        assert engine._blocks - before < 20  # not the 100 blocks of their max_tokens
        assert all(len(c.tokens) < 40 and not c.done.is_set() for c in channels)
        # The freed slots serve new requests, which finish normally.
        from sq_jax.sampling.offline import _ReturnChannel

        finished = []
        fresh = Request(prompt, SamplingParams(temperature=0.0, max_tokens=8))
        driver.place_request_on_prefill_queue(js.orchestrator.ActiveRequest(
            max_tokens=8, return_channel=_ReturnChannel(0, fresh, lambda i, c: finished.append(c)),
            prefill_content=list(prompt), history_path=json.dumps({"sq_jax": {"temperature": 0.0}}),
            is_client_side_tokenization=True))
        while not finished:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert finished[0].token_ids == run_loop(engine, [fresh])[0].token_ids
    finally:
        driver.stop()


def test_a_request_held_between_two_queues_is_still_open_for_a_shutdown_to_fail(engine, monkeypatch):
    """The generate thread holds a request while it inserts it (seconds when the insert compiles on a loaded
    machine), outside every queue and before its slot is known: a SIGTERM then must still fail it, not leave its
    client's stream to be cut without an error."""
    from sq_jax.sampling.jetstream_compat import jetstream, make_driver
    from sq_jax.sampling.offline import _ReturnChannel

    js = jetstream()
    inserting, release = threading.Event(), threading.Event()
    real_insert = type(engine).insert

    def slow_insert(self, *args, **kwargs):
        inserting.set()
        release.wait(timeout=30)
        return real_insert(self, *args, **kwargs)

    monkeypatch.setattr(type(engine), "insert", slow_insert)
    driver = make_driver(engine)
    try:
        finished = []
        request = Request([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=8))
        active = js.orchestrator.ActiveRequest(
            max_tokens=8, return_channel=_ReturnChannel(0, request, lambda i, c: finished.append(c)),
            prefill_content=[5, 6, 7], history_path=json.dumps({"sq_jax": {"temperature": 0.0}}),
            is_client_side_tokenization=True)
        driver.place_request_on_prefill_queue(active)
        assert inserting.wait(timeout=60)
        assert driver.open_requests() == [active]  # held by the generate thread, in no queue and no slot
        release.set()
        deadline = time.monotonic() + 60
        while not finished:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert finished[0].finish_reason == "length" and driver.open_requests() == []
    finally:
        release.set()
        driver.stop()


def _wait_healthy(served: Served) -> None:
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(served.url("/health"), timeout=5).status == 200:
                return
        except OSError:
            pass
        assert time.time() < deadline and served.proc.poll() is None, served.proc.stderr.read()[-3000:]
        time.sleep(0.2)


def test_grpc_answers_64_concurrent_requests_and_refuses_bad_ones_before_queueing(served, engine):
    import grpc
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc

    from sq_jax.sampling.client import Client, make_request

    _wait_healthy(served)
    client = Client(served.grpc)
    assert client.health()
    reqs = requests(engine.hf_tokenizer, 64)
    expected = [c.token_ids for c in run_loop(engine, reqs)]
    channel = grpc.insecure_channel(served.grpc)
    stub = jetstream_pb2_grpc.OrchestratorStub(channel)  # JetStream's own generated stub

    def via_stub(request):
        ids = []
        for response in stub.Decode(make_request(request.token_ids, request.sampling), timeout=120):
            ids += response.stream_content.samples[0].token_ids
        return ids

    def bad(content, **sampling):
        request = jetstream_pb2.DecodeRequest(max_tokens=4, session_cache=json.dumps({"sq_jax": sampling}),
                                              token_content=jetstream_pb2.DecodeRequest.TokenContent(token_ids=content))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Decode(request, timeout=60))
        return info.value.code(), info.value.details()

    with ThreadPoolExecutor(64) as pool:
        ours = pool.map(lambda r: client.generate(r.token_ids, r.sampling).token_ids, reqs)
        theirs = pool.map(via_stub, reqs)
        # While those 128 requests queue and decode, bad ones are refused at once, naming what is wrong.
        time.sleep(0.2)
        assert bad([1, 2], top_p="high") == (grpc.StatusCode.INVALID_ARGUMENT, "top_p must be a number, got 'high'")
        assert bad([1, 2], top_p=0) == (grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1], got 0")
        code, details = bad([1, 10_000_000])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "got 10000000 at position 1" in details
        code, details = bad([5, -3])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "got -3 at position 1" in details
        busy = served.metrics()["sq_jax_requests_queued"] + served.metrics()["sq_jax_requests_running"]
        ours, theirs = list(ours), list(theirs)
    assert busy > 0  # the refusals did not wait for the queue to drain
    assert ours == expected and theirs == expected
    text = client.generate(PROMPT_FORMATS["qwen"].pre_query_template, reqs[0].sampling)
    assert text.token_ids == expected[0] and text.text == engine.hf_tokenizer.decode(expected[0])
    client.close()
    channel.close()


def test_openai_completions_and_chat_give_the_offline_drivers_seeded_tokens(served, engine):
    from sq_jax.sampling.offline import run_driver

    _wait_healthy(served)
    api = served.openai()
    assert [m.id for m in api.models.list().data] == ["tiny"]
    tok, fmt = engine.hf_tokenizer, PROMPT_FORMATS["qwen"]
    prompt = fmt.solver_prompt("What is 2 plus 3?")
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    chat_ids = encode_prompt(tok, fmt.chat(messages, add_generation_prompt=True))
    sampling = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=12, seed=7)
    offline = run_driver(engine, [Request(encode_prompt(tok, prompt), sampling),
                                  Request(chat_ids, dataclasses.replace(sampling, seed=8)),
                                  Request(chat_ids, dataclasses.replace(sampling, seed=9))])
    knobs = dict(model="tiny", max_tokens=12, temperature=0.8, top_p=0.9, seed=7,
                 extra_body={"top_k": 50, "return_token_ids": True})
    done = api.completions.create(prompt=prompt, **knobs)
    assert done.choices[0].model_extra["token_ids"] == offline[0].token_ids
    assert done.choices[0].text == tok.decode(offline[0].token_ids)
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(encode_prompt(tok, prompt)), 12)
    by_ids = api.completions.create(prompt=encode_prompt(tok, prompt), **knobs)
    assert by_ids.choices[0].model_extra["token_ids"] == offline[0].token_ids
    hits = served.metrics()["sq_jax_prefix_hits_total"]
    chat = api.chat.completions.create(messages=messages, n=2, **{**knobs, "seed": 8})
    assert [c.model_extra["token_ids"] for c in chat.choices] == [offline[1].token_ids, offline[2].token_ids]
    assert chat.choices[1].message.role == "assistant"
    assert chat.usage.prompt_tokens == len(chat_ids) and chat.usage.completion_tokens == 24
    assert served.metrics()["sq_jax_prefix_hits_total"] >= hits + 1  # n samples of one prompt: one prefill


def test_openai_streaming_n_and_stop_strings(served, engine):
    _wait_healthy(served)
    api = served.openai()
    tok = engine.hf_tokenizer
    prompt = PROMPT_FORMATS["qwen"].pre_query_template
    whole = api.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=1.0, seed=3, n=5)
    texts = [c.text for c in whole.choices]
    assert len(set(texts)) > 1
    chunks = list(api.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=1.0, seed=3, n=5,
                                         stream=True))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(5)]
    assert streamed == texts
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finals) == sorted(c.finish_reason for c in whole.choices)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    # A stop string taken from the middle of the unstopped text: the reply ends just before it, reason "stop".
    long = api.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0.0, seed=1).choices[0]
    assert long.finish_reason == "length" and len(long.text) > 8
    stop = long.text[len(long.text) // 2: len(long.text) // 2 + 3]
    cut = long.text[: long.text.find(stop)]
    for stream in (False, True):
        reply = api.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0.0, seed=1,
                                       stop=[stop], stream=stream)
        if stream:
            pieces = list(reply)
            text = "".join(c.choices[0].text for c in pieces if c.choices)
            reason = [c.choices[0].finish_reason for c in pieces if c.choices and c.choices[0].finish_reason]
        else:
            text, reason = reply.choices[0].text, [reply.choices[0].finish_reason]
        assert (text, reason) == (cut, ["stop"])
    chat = list(api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, stream=True, seed=2))
    assert chat[0].choices[0].delta.role == "assistant" and chat[-1].usage.completion_tokens <= 6


def _reference_logprobs(model_dir, prompt_ids: list[int], tokens: list[int]) -> list[float]:
    """The sampled tokens' log-probabilities by transformers' own forward pass over prompt + tokens (float32)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                              attn_implementation="eager")
    ids = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1: -1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


def test_openai_logprobs_are_the_models_own_for_the_sampled_tokens(served, engine, tiny):
    import openai

    _wait_healthy(served)
    api = served.openai()
    tok, fmt = engine.hf_tokenizer, PROMPT_FORMATS["qwen"]
    prompt = fmt.solver_prompt("What is 2 plus 3?")
    knobs = dict(model="tiny", prompt=prompt, max_tokens=12, temperature=0.8, seed=5, n=2, logprobs=0,
                 extra_body={"return_token_ids": True})
    whole = api.completions.create(**knobs)
    prompt_ids = encode_prompt(tok, prompt)
    for choice in whole.choices:
        tokens = choice.model_extra["token_ids"]
        assert choice.logprobs.tokens == [tok.decode([t]) for t in tokens]
        # Under the model, before temperature: what transformers computes for the same tokens.
        assert choice.logprobs.token_logprobs == pytest.approx(_reference_logprobs(tiny, prompt_ids, tokens),
                                                               abs=2e-4)
    chunks = list(api.completions.create(**knobs, stream=True))
    streamed = [[v for c in chunks if c.choices and c.choices[0].index == i and c.choices[0].logprobs
                 for v in c.choices[0].logprobs.token_logprobs] for i in range(2)]
    assert streamed == [c.logprobs.token_logprobs for c in whole.choices]
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    chat = api.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0.0,
                                       logprobs=True, extra_body={"return_token_ids": True}).choices[0]
    tokens = chat.model_extra["token_ids"]
    chat_ids = encode_prompt(tok, fmt.chat(messages, add_generation_prompt=True))
    assert [e.logprob for e in chat.logprobs.content] == pytest.approx(
        _reference_logprobs(tiny, chat_ids, tokens), abs=2e-4)
    assert [e.bytes for e in chat.logprobs.content] == [list(tok.decode([t]).encode()) for t in tokens]
    plain = api.completions.create(model="tiny", prompt=prompt, max_tokens=4)
    assert plain.choices[0].logprobs is None  # not asked: not computed on the host
    for call, field in ((lambda: api.completions.create(**{**knobs, "logprobs": 2}), "logprobs"),
                        (lambda: api.chat.completions.create(model="tiny", messages=messages, logprobs=True,
                                                             top_logprobs=3), "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["param"] == field and "top alternatives" in info.value.body["message"]


def _post(served: Served, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(served.url(path), body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_bad_requests_are_400_naming_the_field_and_a_full_queue_is_429(served):
    import openai

    _wait_healthy(served)
    api = served.openai()
    cases = [({"top_p": 0}, "top_p"), ({"temperature": -0.5}, "temperature"), ({"model": "gpt-4"}, "model"),
             ({"prompt": "three " * 400}, "prompt"), ({"prompt": [1, 10_000_000]}, "prompt"),
             ({"max_tokens": 600}, "max_tokens"), ({"extra_body": {"top_p": "high"}}, "top_p")]
    for change, field in cases:
        with pytest.raises(openai.BadRequestError) as info:
            api.completions.create(**{"model": "tiny", "prompt": "Hi", "max_tokens": 4, **change})
        assert info.value.status_code == 400 and info.value.body["param"] == field, (change, info.value.body)
        assert info.value.body["type"] == "invalid_request_error" and info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 400}], max_tokens=4)
    assert info.value.body["param"] == "messages" and "max_prefill_length=384" in info.value.body["message"]
    status, reply = _post(served, "/v1/completions", b'{"model": "tiny", "prompt": "Hi",')
    assert status == 400 and "malformed JSON" in reply["error"]["message"]
    # 128 samples at once overflow the 64-request queue: refused whole, at once; then the server still serves.
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        api.completions.create(model="tiny", prompt="Hi", max_tokens=300, n=128, temperature=1.0)
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 60
    while served.metrics()["sq_jax_slots_in_use"] > 0:  # the refused request's placed samples were cancelled
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.completions.create(model="tiny", prompt="Hi", max_tokens=4).choices[0].finish_reason == "length"


def _until(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_client_leaving_mid_stream_frees_its_slot_on_both_fronts(served):
    import grpc
    from jetstream.core.proto import jetstream_pb2_grpc

    from sq_jax.sampling.client import make_request

    _wait_healthy(served)
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] == 0)
    tokens = served.metrics()["sq_jax_generated_tokens_total"]
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 480, "temperature": 1.0, "stream": True,
                       "n": 4})
    host, port = served.http.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    assert connection.getresponse().readline().startswith(b"data: ")
    # Its samples hold slots (not always all 4 at one poll: on a loaded box a sample may end early on EOS).
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] >= 1)
    connection.sock.shutdown(socket.SHUT_RDWR)  # HTTP: the client goes away mid-stream
    connection.close()
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] == 0)
    whole = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 480, "temperature": 1.0, "n": 4})
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", whole, {"Content-Type": "application/json"})
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] >= 1)
    connection.sock.shutdown(socket.SHUT_RDWR)  # HTTP: the client of a plain request goes away before its answer
    connection.close()
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] == 0)
    channel = grpc.insecure_channel(served.grpc)
    stream = jetstream_pb2_grpc.OrchestratorStub(channel).Decode(
        make_request([5, 6, 7], SamplingParams(temperature=1.0, max_tokens=480)), timeout=60)
    next(stream)
    stream.cancel()  # gRPC: the call is cancelled mid-stream
    _until(lambda: served.metrics()["sq_jax_slots_in_use"] == 0)
    channel.close()
    assert served.metrics()["sq_jax_generated_tokens_total"] - tokens < 9 * 480 / 2  # far from 9 x 480


def test_tiny_pipeline_runs_its_optimiser_through_sq_jax_serve(served, tmp_path, monkeypatch):
    from sq_jax.pipeline.config import load_pipeline
    from sq_jax.pipeline.runner import StageError, run_pipeline

    _wait_healthy(served)
    monkeypatch.setenv("SQ_JAX_API_KEY", "local")
    requests_before = served.metrics()["sq_jax_prefills_total"] + served.metrics()["sq_jax_prefix_hits_total"]
    cfg = load_pipeline("configs/pipeline/tiny-served-optimiser.yaml", [
        f"output_dir={tmp_path}", "stages.questions.config.sources=[{path: 'procedural:12:11'}]",
        "stages.qpo_pairs.config.openai.model=tiny", f"stages.qpo_pairs.config.openai.base_url={served.url('/v1')}",
        "stages.qpo_pairs.config.max_tokens=32"])
    # The untrained tiny model writes no "### Final Question" section, so the stage ends with no pairs; its
    # stats say every request was answered (none failed) by the server.
    with pytest.raises(StageError, match="produced no records") as info:
        run_pipeline(cfg)
    stats = json.loads(str(info.value).split("(stats: ", 1)[1].rsplit(");", 1)[0])
    assert stats["requests"] == 12 and stats["errors"] == 0, stats
    served_requests = served.metrics()["sq_jax_prefills_total"] + served.metrics()["sq_jax_prefix_hits_total"]
    assert served_requests - requests_before >= 12


def test_eval_answers_through_sq_jax_serve(served, tmp_path):
    from sq_jax.eval.runner import EvalConfig, _prompt_rows, load_items, run_eval
    from sq_jax.prompts.solver import SOLVER_INSTRUCTION
    from sq_jax.sampling.generate_job import request_seed

    _wait_healthy(served)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is {a} plus 2?", "answer": str(a + 2)}) + "\n"
                             for a in (3, 4, 5)))
    cfg = EvalConfig(model="tiny", output_dir=str(tmp_path / "eval"), benchmarks=[f"jsonl:{bench}"], samples=2,
                     temperature=0.7, max_tokens=8, base_url=served.url("/v1"), grade_workers=1)
    report = run_eval(cfg, collective=False)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and sorted(s["sample"] for s in samples) == [0, 0, 0, 1, 1, 1]
    assert f"jsonl:{bench}" in report["metrics"]
    row = _prompt_rows(load_items(cfg))[1]  # the same request sent directly gives the same answer (seeded)
    direct = served.openai().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"{row['question']}\n{SOLVER_INSTRUCTION}"}], n=2,
        temperature=0.7, max_tokens=8, seed=request_seed(0, row["id"]) & 0x3FFFFFFF)
    mine = sorted((s for s in samples if f"jsonl:{bench}/{s['id']}" == row["id"]), key=lambda s: s["sample"])
    assert [s["output"] for s in mine] == [c.message.content for c in direct.choices]


def test_api_key_is_asked_only_when_configured(loaded):
    import openai

    from sq_jax.sampling.server import FrontSettings, Server

    server = Server(loaded, FrontSettings(grpc_port=None, http_port=0, model_name="tiny", api_key="s3cret"))
    try:
        url = f"http://{server.http_address}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert ok.completions.create(model="tiny", prompt="Hi", max_tokens=3).usage.completion_tokens == 3
        assert urllib.request.urlopen(f"http://{server.http_address}/health", timeout=10).status == 200
    finally:
        server.stop()


def test_sigterm_with_open_streams_fails_them_clearly_and_exits_within_seconds(served, engine):
    import grpc

    from sq_jax.sampling.client import Client

    _wait_healthy(served)
    client = Client(served.grpc, timeout=60)
    outcomes: list[str] = []

    def grpc_stream():
        try:
            client.generate([5, 6, 7], SamplingParams(temperature=1.0, max_tokens=480))
            outcomes.append("finished")
        except grpc.RpcError as e:
            outcomes.append(f"{e.code().name}: {e.details()}")

    def http_stream():
        body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 480, "stream": True}).encode()
        request = urllib.request.Request(served.url("/v1/completions"), body, {"Content-Type": "application/json"})
        try:
            lines = [line for line in urllib.request.urlopen(request, timeout=60) if line.strip()]
            last = lines[-1].decode()
            outcomes.append("finished" if last.startswith("data: [DONE]") else last)
        except urllib.error.HTTPError as e:
            outcomes.append(f"http {e.code}: {e.read().decode()}")
        except OSError as e:
            outcomes.append(f"http: {e}")

    threads = [threading.Thread(target=f) for f in (grpc_stream, http_stream) for _ in range(16)]
    for t in threads:
        t.start()
    def admitted() -> bool:  # all 32 in: 8 decoding, the rest queued (one may be between two queues)
        m = served.metrics()
        return m["sq_jax_slots_in_use"] == 8 and m["sq_jax_requests_queued"] + m["sq_jax_requests_running"] >= 31

    _until(admitted)
    t0 = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    rc = served.proc.wait(timeout=30)
    took = time.monotonic() - t0
    for t in threads:
        t.join(timeout=30)
    assert rc == 0, served.proc.stderr.read()[-3000:]
    assert took < 6, f"took {took:.1f} s to exit"
    assert len(outcomes) == 32
    for outcome in outcomes:
        assert outcome == "finished" or "shutting down" in outcome, outcome
    assert any("UNAVAILABLE" in o for o in outcomes) and any("server_error" in o for o in outcomes), outcomes
    for address in (served.grpc, served.http):  # both ports are free again for a new server (which, like
        with socket.socket() as s:              # these, sets SO_REUSEADDR: closed connections may linger)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
            s.listen()
