"""The QPO-data stage: directions, instructions, final-question parsing, the OpenAI and local backends, optimise.

The OpenAI backend talks to a scripted stand-in server on 127.0.0.1 speaking the chat-completions protocol.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sq_jax.pipeline.chat_backends import (
    ChatRequest,
    ChatResult,
    LocalBackend,
    OpenAIBackend,
)
from sq_jax.pipeline.optimise import optimise
from sq_jax.prompts.optimiser import (
    check_directions,
    DIRECTIONS,
    choose_direction,
    optimiser_messages,
    parse_final_question,
)

KEY_ENV = "SQ_TEST_OPTIMISER_KEY"


class FakeOpenAI:
    """A chat-completions server: each request takes the next scripted behaviour, else `respond(body)`.

    Behaviours: ("reply", text), ("status", code), ("sleep", seconds) then a reply, ("raw", body string),
    ("retry_after", seconds) (a 429 with that Retry-After header), ("truncated", text) (finish_reason length)."""

    def __init__(self) -> None:
        self.script: collections.deque = collections.deque()
        self.respond: Callable[[dict], tuple] = lambda body: ("reply", "### Final Question\nWhat is 1 + 1?")
        self.requests: list[tuple[dict, dict]] = []  # (headers, body) in arrival order
        self.arrivals: list[float] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def send(self, code: int, payload: str, headers: dict[str, str] | None = None) -> None:
                data = payload.encode()
                try:
                    self.send_response(code)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test): nothing left to answer

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    return self.send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    fake.arrivals.append(time.perf_counter())
                    behaviour = fake.script.popleft() if fake.script else None
                kind, arg = behaviour or fake.respond(body)
                if kind == "status":
                    return self.send(arg, json.dumps({"error": {"message": f"scripted {arg}", "type": "x"}}))
                if kind == "raw":
                    return self.send(200, arg)
                if kind == "retry_after":
                    return self.send(429, json.dumps({"error": {"message": "slow down", "type": "x"}}),
                                     {"Retry-After": str(arg)})
                finish = "length" if kind == "truncated" else "stop"
                if kind == "sleep":
                    time.sleep(arg)
                    arg = "### Final Question\ntoo late"
                choice = {"index": 0, "message": {"role": "assistant", "content": arg}, "finish_reason": finish}
                self.send(200, json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                           "model": body["model"], "choices": [choice]}))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server = FakeOpenAI()
    yield server
    server.close()


def backend(fake: FakeOpenAI, **overrides) -> OpenAIBackend:
    kwargs = dict(model="gpt-test", base_url=fake.url, api_key_env=KEY_ENV, timeout_s=5, max_retries=3,
                  concurrency=4)
    return OpenAIBackend(**(kwargs | overrides))


def request(rid: str, question: str = "What is 2 + 2?", direction: str = "solvability") -> ChatRequest:
    return ChatRequest(rid, optimiser_messages(question, direction))


def question_of(body: dict) -> str:
    return re.search(r"<question>\n(.*?)\n</question>", body["messages"][1]["content"], re.DOTALL).group(1)


# --- directions and instructions -------------------------------------------------------------------------------
def test_directions_deterministic_balanced_and_seeded():
    ids = [f"q{i:05d}" for i in range(400)]
    first = [choose_direction(i, seed=3) for i in ids]
    assert first == [choose_direction(i, seed=3) for i in ids]
    assert set(first) == set(DIRECTIONS)
    assert 160 <= first.count("difficulty") <= 240
    other = [choose_direction(i, seed=4) for i in ids]
    assert 120 <= sum(a != b for a, b in zip(first, other)) <= 280  # a new seed re-draws, independently


def test_directions_can_be_restricted():
    ids = [f"q{i:05d}" for i in range(50)]
    assert {choose_direction(i, 3, ("difficulty",)) for i in ids} == {"difficulty"}
    # Both directions listed in either order: the same even split, so the paper's default is unchanged.
    assert [choose_direction(i, 3, DIRECTIONS) for i in ids] == [choose_direction(i, 3) for i in ids]
    for bad in ([], ["harder"], ["solvability", "solvability"]):
        with pytest.raises(ValueError, match="directions must be distinct names"):
            check_directions(bad)


def test_optimise_sends_only_the_configured_direction(fake: FakeOpenAI, tmp_path: Path):
    records = [{"id": f"r{i}", "question": f"What is {i} + 1?"} for i in range(6)]
    fake.respond = lambda body: ("reply", "### Final Question\nRewritten " + question_of(body))
    pairs, stats = optimise(records, backend(fake, cache_dir=tmp_path), seed=0, directions=["solvability"])
    assert stats["requests_solvability"] == stats["pairs_solvability"] == 6 and stats["requests_difficulty"] == 0
    assert all(p["direction"] == "solvability" for p in pairs)
    assert all(b["messages"] == optimiser_messages(question_of(b), "solvability") for _, b in fake.requests)


def test_optimiser_messages():
    question = "Find $x$ if \\boxed{x} + {y} = 3 and y = 1."
    solv, diff = optimiser_messages(question, "solvability"), optimiser_messages(question, "difficulty")
    for messages in (solv, diff):
        assert [m["role"] for m in messages] == ["system", "user"]
        user = messages[1]["content"]
        assert question in user  # braces survive verbatim
        assert user.rstrip().splitlines()[-2] == "### Final Question"  # the last section, as asked
    assert "single numeric answer" in solv[1]["content"] and "restate" in solv[1]["content"]
    assert "10 to 20 words" in diff[1]["content"] and "more reasoning steps" in diff[1]["content"]
    assert solv[1]["content"] != diff[1]["content"]
    with pytest.raises(ValueError, match="unknown direction 'harder'"):
        optimiser_messages(question, "harder")


# --- parsing ---------------------------------------------------------------------------------------------------
Q = "A train travels 60 km in 1.5 hours. What is its average speed in km/h?"
PARSE_CASES = [
    ("### Analysis\nIt is solvable.\n\n### Final Question\n" + Q, Q),
    ("### Analysis\nok\n### Final Question\n\n" + Q + "\n\n", Q),
    ("## Final Question\n" + Q, Q),
    ("**Final Question:** " + Q, Q),
    ("**Final Question:**\n" + Q, Q),
    ("**Final Question**:\n\n\"" + Q + "\"", Q),
    ("Final Question: " + Q, Q),
    ("final question:\n" + Q, Q),
    ("### Final Question\n```\n" + Q + "\n```", Q),
    ("### Final Question\n```text\n" + Q + "\n```\nLet me know if you need more.", Q),
    ("### Final Question\n> " + Q, Q),
    ("### Final Question\n“" + Q + "”", Q),
    ("### Final Question\n*\"What is 2*3 + 4?\"*", "What is 2*3 + 4?"),
    ("### Final Question\n" + Q + "<|im_end|>", Q),
    ("### Final Question\n" + Q + "<|eot_id|><|start_header_id|>user", Q),
    ("<|im_start|>assistant\n### Final Question\n" + Q + "<|im_end|>\n<|im_start|>user\n### Final Question\nX",
     Q),
    ("### Final Question\n" + Q + "</s>", Q),
    ("### Final Question\nQuestion: " + Q, Q),
    ("### Final Question\n" + Q + "\n\n---\nNote: I added 15 words.", Q),
    ("### Final Question\n" + Q + "\n\n### Answer\n40", Q),
    ("### Final Question\nDraft one?\n\n### Revision\nBetter.\n\n### Final Question\n" + Q, Q),
    ("## 3. Final Rewritten Question\n" + Q, Q),
    ("### Final Question\nLet $f(x) = x^2$.\nFind $f(3)$.", "Let $f(x) = x^2$.\nFind $f(3)$."),
    ("### Analysis\nThe question lacks data.", None),
    ("### Final Question\n", None),
    ("### Final Question\n```\n```", None),
    ("### Final Question\n\"\"", None),
    ("The final question is whether the train stops.", None),
    ("Final question is whether it is solvable.", None),
    ("", None),
]


@pytest.mark.parametrize("reply,expected", PARSE_CASES)
def test_parse_final_question(reply: str, expected: str | None):
    assert parse_final_question(reply) == expected


# --- OpenAI backend against the stand-in server ----------------------------------------------------------------
def test_retries_429_then_500_then_succeeds(fake: FakeOpenAI):
    fake.script.extend([("status", 429), ("status", 500)])
    req = request("a")
    [result] = backend(fake, temperature=0.0, max_tokens=77, seed=5).complete([req])
    assert result == ChatResult("a", "### Final Question\nWhat is 1 + 1?", None, cached=False, finish_reason="stop")
    assert len(fake.requests) == 3
    headers, body = fake.requests[-1]
    assert headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "gpt-test" and body["messages"] == req.messages
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.0, 77, 5)


def test_gives_up_after_max_retries_and_skips_hopeless_statuses(fake: FakeOpenAI):
    fake.respond = lambda body: ("status", 503)
    [result] = backend(fake, max_retries=2).complete([request("a")])
    assert result.text is None and "HTTP 503 (after 3 attempts" in result.error
    assert len(fake.requests) == 3
    fake.respond = lambda body: ("status", 400)
    [result] = backend(fake).complete([request("b")])
    assert result.text is None and result.error.startswith("HTTP 400")
    assert len(fake.requests) == 4  # a bad request is not retried


def test_timeout_is_retried_then_an_error_result(fake: FakeOpenAI):
    fake.respond = lambda body: ("sleep", 1.0)
    start = time.perf_counter()
    [result] = backend(fake, timeout_s=0.3, max_retries=1).complete([request("slow")])
    assert time.perf_counter() - start < 3.0  # two 0.3 s attempts and the client's backoff, not two 1 s replies
    assert result.id == "slow" and result.text is None and "timed out" in result.error
    assert len(fake.requests) == 2


def test_the_clients_retries_honour_retry_after(fake: FakeOpenAI):
    fake.script.append(("retry_after", 2))
    [result] = backend(fake).complete([request("a")])
    assert result.text is not None and len(fake.requests) == 2
    assert fake.arrivals[1] - fake.arrivals[0] >= 1.9  # waited as told, not the client's sub-second backoff


def test_a_reply_cut_at_max_tokens_is_never_a_chosen_question(fake: FakeOpenAI, tmp_path: Path):
    fake.respond = lambda body: (("truncated", "### Analysis\nLong...\n### Final Question\nIf a train leaves")
                                 if "cut" in question_of(body) else ("reply", "### Final Question\nWhole rewrite?"))
    records = [{"id": "cut", "question": "cut question"}, {"id": "ok", "question": "ok question"}]
    pairs, stats = optimise(records, backend(fake, cache_dir=tmp_path), seed=0)
    assert [p["id"] for p in pairs] == ["ok"]
    assert stats["dropped_truncated"] == 1 and stats["pairs"] == 1
    again, stats = optimise(records, backend(fake, cache_dir=tmp_path), seed=0)  # from the cache: still dropped
    assert stats["cached"] == 2 and stats["dropped_truncated"] == 1 and [p["id"] for p in again] == ["ok"]


def test_malformed_replies_are_error_results(fake: FakeOpenAI):
    bad = {
        "json": ("raw", "{not json"),
        "nochoices": ("raw", json.dumps({"id": "x", "choices": []})),
        "nomessage": ("raw", json.dumps({"choices": [{"index": 0}]})),
        "empty": ("reply", "  \n"),
        "good": ("reply", "### Final Question\nWhat is 3 + 4?"),
    }
    fake.respond = lambda body: bad[question_of(body)]
    results = backend(fake).complete([request(k, question=k) for k in bad])
    assert [r.id for r in results] == list(bad)
    assert [r.text is None for r in results] == [True, True, True, True, False]
    assert "malformed JSON" in results[0].error and "no choices" in results[1].error
    assert "empty content" in results[2].error and "empty content" in results[3].error
    assert len(fake.requests) == len(bad)  # a malformed reply is an answer, not a transient failure


def test_cache_hits_on_rerun(fake: FakeOpenAI, tmp_path: Path):
    fake.respond = lambda body: ("reply", f"### Final Question\nHarder {question_of(body)}")
    reqs = [request("a", "q one"), request("b", "q two"), request("a2", "q one")]  # a2 repeats a's messages
    first = backend(fake, cache_dir=tmp_path).complete(reqs)
    assert len(fake.requests) == 2  # identical messages are paid for once
    assert [r.text for r in first] == ["### Final Question\nHarder q one", "### Final Question\nHarder q two",
                                       "### Final Question\nHarder q one"]
    assert not any(r.cached for r in first)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2 and not list(tmp_path.glob(".*"))  # no temp files left behind
    entry = json.loads(files[0].read_text())
    assert entry["model"] == "gpt-test" and entry["text"].startswith("### Final Question")

    again = backend(fake, cache_dir=tmp_path).complete(reqs)
    assert len(fake.requests) == 2  # zero requests sent on the rerun
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)

    backend(fake, cache_dir=tmp_path, temperature=0.1).complete(reqs[:1])
    assert len(fake.requests) == 3  # another temperature is another request
    b = backend(fake, cache_dir=tmp_path)
    (tmp_path / f"{b.cache_key(reqs[1].messages)}.json").write_text("{truncated")
    assert [r.cached for r in b.complete(reqs)] == [True, False, True]
    assert len(fake.requests) == 4  # the corrupt entry is a miss; the other still hits

    fake.respond = lambda body: ("status", 400)
    backend(fake, cache_dir=tmp_path).complete([request("c", "q three")])
    backend(fake, cache_dir=tmp_path).complete([request("c", "q three")])
    assert len(fake.requests) == 6  # errors are not cached: a rerun retries them


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SQ_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match=r"^optimise:.*SQ_TEST_MISSING_KEY"):
        OpenAIBackend("gpt-test", base_url="http://127.0.0.1:9/v1", api_key_env="SQ_TEST_MISSING_KEY")


# --- the stage -------------------------------------------------------------------------------------------------
def test_optimise_end_to_end(fake: FakeOpenAI, tmp_path: Path):
    records = [{"id": f"r{i}", "question": f"Question number {i}: what is {i} + {i}?", "extra": i}
               for i in range(8)]
    q = {r["id"]: r["question"] for r in records}
    good = {"r0": "### Analysis\nFine.\n### Final Question\nHarder r0: what is 0 + 0 + 5?",
            "r1": "**Final Question:** Rewritten r1?",
            "r7": "### Final Question\n```\nRewritten r7?\n```"}
    behaviours = {"r0": ("reply", good["r0"]), "r1": ("reply", good["r1"]), "r7": ("reply", good["r7"]),
                  "r2": ("reply", "Sorry, I cannot help with that."),
                  "r3": ("reply", "### Final Question\n  " + q["r3"].upper().replace(" ", "   ")),
                  "r4": ("raw", "{oops"), "r5": ("raw", json.dumps({"choices": []})), "r6": ("status", 400)}
    by_question = {q[k]: v for k, v in behaviours.items()}
    fake.respond = lambda body: by_question[question_of(body)]

    pairs, stats = optimise(records, backend(fake, cache_dir=tmp_path), seed=11)
    directions = {r["id"]: choose_direction(r["id"], 11) for r in records}
    assert [p["id"] for p in pairs] == ["r0", "r1", "r7"]
    assert {"id", "chosen", "rejected", "direction", "optimiser_reply"} == set(pairs[0])
    assert [p["chosen"] for p in pairs] == ["Harder r0: what is 0 + 0 + 5?", "Rewritten r1?", "Rewritten r7?"]
    assert [p["rejected"] for p in pairs] == [q["r0"], q["r1"], q["r7"]]
    assert [p["optimiser_reply"] for p in pairs] == [good["r0"], good["r1"], good["r7"]]
    assert [p["direction"] for p in pairs] == [directions[k] for k in ("r0", "r1", "r7")]
    sent = {question_of(b): b["messages"] for _, b in fake.requests}
    for r in records:  # each request carries its record's direction's instructions
        assert sent[r["question"]] == optimiser_messages(r["question"], directions[r["id"]])
    per = collections.Counter(directions.values())
    pair_dirs = collections.Counter(p["direction"] for p in pairs)
    assert stats == {"requests": 8, "cached": 0, "errors": 3, "dropped_truncated": 0, "dropped_unparsable": 1,
                     "dropped_unchanged": 1,
                     "pairs": 3, "requests_solvability": per["solvability"], "requests_difficulty": per["difficulty"],
                     "pairs_solvability": pair_dirs["solvability"], "pairs_difficulty": pair_dirs["difficulty"]}
    assert len(fake.requests) == 8

    # Rerun: the five text replies come from the cache; only the three errors are asked again.
    pairs2, stats2 = optimise(records, backend(fake, cache_dir=tmp_path), seed=11)
    assert pairs2 == pairs and stats2 == stats | {"cached": 5}
    assert len(fake.requests) == 11


class _Stub:
    def __init__(self, results: Callable[[list[ChatRequest]], list[ChatResult]]):
        self.results, self.calls = results, 0

    def complete(self, requests):
        self.calls += 1
        return self.results(list(requests))


def test_optimise_rejects_bad_input_and_bad_backends():
    stub = _Stub(lambda reqs: [ChatResult(r.id, "### Final Question\nNew?", None) for r in reqs])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        optimise([{"id": "a", "question": "x"}, {"id": "a", "question": "y"}], stub, seed=0)
    with pytest.raises(ValueError, match="'text'"):
        optimise([{"id": "a", "question": "x"}], stub, seed=0, question_field="text")
    with pytest.raises(ValueError, match="must be a string"):
        optimise([{"id": "a", "question": None}], stub, seed=0)
    assert stub.calls == 0
    pairs, stats = optimise([{"uid": 7, "text": "Old?"}], stub, seed=0, question_field="text", id_field="uid")
    assert pairs[0]["id"] == "7" and pairs[0]["chosen"] == "New?" and stats["pairs"] == 1
    lossy = _Stub(lambda reqs: [ChatResult(r.id, "x", None) for r in reqs[1:]])
    with pytest.raises(RuntimeError, match="other ids"):
        optimise([{"id": "a", "question": "x"}, {"id": "b", "question": "y"}], lossy, seed=0)


# --- local backend on the tiny model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_backend(tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    from sq_jax.sampling.engine_factory import EngineSettings
    from sq_jax.toy.tiny import build_tiny

    path = build_tiny(tmp_path_factory.mktemp("tiny") / "tiny")
    settings = EngineSettings(max_slots=4, max_cache_length=1024, max_prefill_length=768, dtype="float32",
                              mesh_tensor=1, mesh_fsdp=-1, overlong_prompt="truncate_left")
    return LocalBackend(str(path), engine=settings, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)


def test_local_backend_deterministic_per_id(local_backend: LocalBackend):
    reqs = [request("a", "What is 2 + 2?"), request("b", "What is 3 + 5?", "difficulty"),
            ChatRequest("bad", [{"role": "robot", "content": "hi"}])]
    first = local_backend.complete(reqs)
    assert [r.id for r in first] == ["a", "b", "bad"]
    assert first[2].text is None and "unsupported role" in first[2].error
    for r in first[:2]:
        assert isinstance(r, ChatResult) and not r.cached
        assert (isinstance(r.text, str) and r.text.strip() and r.error is None) or r.error == "empty reply"
        assert r.text is None or "<|im_end|>" not in r.text
    assert any(r.text for r in first)
    # The same ids in another order and batch give the same replies: each request is seeded by its id.
    again = local_backend.complete(reqs[1::-1])
    assert {r.id: r for r in again} == {r.id: r for r in first[:2]}
    local_backend.seed = 1  # another job seed re-draws every request (restored below for the next test)
    try:
        reseeded = local_backend.complete(reqs[:2])
    finally:
        local_backend.seed = 0
    assert [r.text for r in reseeded] != [r.text for r in first[:2]]


def test_optimise_with_local_backend_accounts_for_every_record(local_backend: LocalBackend):
    records = [{"id": f"t{i}", "question": f"What is {i} times {i + 1}?"} for i in range(3)]
    pairs, stats = optimise(records, local_backend, seed=1)
    assert stats["requests"] == 3
    assert (stats["errors"] + stats["dropped_truncated"] + stats["dropped_unparsable"] + stats["dropped_unchanged"]
            + stats["pairs"]) == 3
    assert len(pairs) == stats["pairs"]
