"""QPO data: an optimiser LLM rewrites generated questions; pair = (chosen: rewrite, rejected: original).

Each question goes one of two directions (SCALEQUEST.md section 2), picked by a hash of (seed, id) so reruns and
resumed runs agree. The optimiser answers in sections whose last one, `### Final Question`, holds the rewrite.
Backends share one call, `complete(requests) -> results` in request order: `OpenAIBackend` (any server speaking
the OpenAI chat-completions protocol, with retries and an on-disk cache) and `LocalBackend` (an sq-jax model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from sq_jax.data.dataset import atomic_open

if TYPE_CHECKING:
    from sq_jax.sampling.server import EngineSettings

log = logging.getLogger(__name__)

DIRECTIONS = ("solvability", "difficulty")
FINAL_HEADING = "### Final Question"

_SYSTEM = (
    "You are an expert author and editor of mathematics competition and textbook problems. "
    "You follow the requested output format exactly."
)
_FORMAT = (
    "Format your reply as the sections below, in this order, and write nothing after the last one:\n"
    "### Analysis\n<your reasoning, briefly>\n"
    f"{FINAL_HEADING}\n<only the final question: no heading, label, answer, solution or comment>"
)
# `{question}` is substituted with str.replace: math text is full of braces that str.format would misread.
INSTRUCTIONS: dict[str, str] = {
    "solvability": (
        "Below is a math question written by a question-generation model. Make sure it is a real, solvable "
        "math problem.\n\n<question>\n{question}\n</question>\n\n"
        "Steps:\n"
        "1. Check it: is it a genuine mathematics problem asking for one specific quantity? Does it state every "
        "number, condition and definition needed, without relying on a figure, table or earlier context? Is it "
        "free of contradictions and ambiguity? Does it have exactly one numeric answer?\n"
        "2. If every check passes, keep the question as it is; fix only grammar or wording.\n"
        "3. If any check fails, change as little as possible to fix it: add the missing information, remove "
        "contradictions, and make it ask for a single numeric answer. The final question must restate all the "
        "information needed to solve it.\n"
        "4. Do not solve the problem and do not reveal its answer.\n\n" + _FORMAT
    ),
    "difficulty": (
        "Below is a math question written by a question-generation model. Rewrite it into a harder problem.\n\n"
        "<question>\n{question}\n</question>\n\n"
        "Steps:\n"
        "1. Work out what it asks and how it is solved.\n"
        "2. Make the solution need more reasoning steps: for example ask for a quantity that must be derived "
        "from the original answer, add a condition or constraint, or combine it with a second concept.\n"
        "3. Add only 10 to 20 words to the original question; do not pad it with story or irrelevant detail.\n"
        "4. The new problem must stay self-contained, unambiguous and solvable, with a single numeric answer.\n"
        "5. Do not solve the problem and do not reveal its answer.\n\n" + _FORMAT
    ),
}


def check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    """`directions` as a tuple, refused when empty, repeated or naming an unknown direction."""
    directions = tuple(directions)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if not directions or unknown or len(set(directions)) != len(directions):
        raise ValueError(f"optimise: directions must be distinct names from {DIRECTIONS}, got {list(directions)}")
    return directions


def choose_direction(question_id: str, seed: int, directions: Sequence[str] = DIRECTIONS) -> str:
    """The rewrite direction of one question: a hash of (seed, id), evenly over `directions`, stable across runs."""
    # Its own namespace, so the choice is uncorrelated with `request_seed(seed, id)` used for sampling.
    digest = hashlib.sha256(f"sq-jax/optimise-direction/{seed}/{question_id}".encode()).digest()
    return directions[digest[0] % len(directions)]


def optimiser_messages(question: str, direction: str) -> list[dict[str, str]]:
    """OpenAI chat messages (system + user) asking the optimiser to rewrite `question` in `direction`."""
    if direction not in INSTRUCTIONS:
        raise ValueError(f"optimise: unknown direction {direction!r}; expected one of {DIRECTIONS}")
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": INSTRUCTIONS[direction].replace("{question}", question.strip())},
    ]


# --- parsing ---------------------------------------------------------------------------------------------------
# A heading line in any common markdown spelling: "### Final Question", "**Final Question:**", "Final question:",
# "## 3. Final Rewritten Question", "> **Final Question**:". It must end the line or carry a colon, so prose such
# as "Final question is whether ..." is not a heading; after a colon the line may already hold the question.
_HEADING = re.compile(
    r"^[ \t]*(?:>[ \t]*)?(?:#{1,6}[ \t]*)?(?:\d+[.)][ \t]*)?[*_]{0,3}[ \t]*final[ \t]+"
    r"(?:(?:rewritten|revised|optimi[sz]ed|improved|new|refined|harder)[ \t]+)?question[ \t]*[*_]{0,3}[ \t]*"
    r"(?::[ \t]*[*_]{0,3}|(?=[ \t]*$))[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# Special tokens a model or a server may leave in a reply; from the first one after the text on, it is junk.
_ROLE_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>|</s>|<｜[^｜]*｜>|\[/?INST\]")
_LEADING_ROLE = re.compile(r"^\s*(?:(?:<\|[A-Za-z_]+\|>|<s>|<｜[^｜]*｜>)(?:assistant|system|user)?[ \t:]*\n?\s*)+")
_NEXT_SECTION = re.compile(r"^[ \t]*(?:#{1,6}[ \t]|(?:-{3,}|\*{3,}|_{3,})[ \t]*$)", re.MULTILINE)
_FENCE = re.compile(r"^```(?:[\w+-]*[ \t]*\n)?(.*?)(?:\n?```.*)?$", re.DOTALL)
_LABEL = re.compile(r"^[*_]{0,2}(?:(?:rewritten|revised|new)[ \t]+)?(?:question|problem|q)[ \t]*:[ \t]*[*_]{0,2}[ \t]*",
                    re.IGNORECASE)
_QUOTES = (("**", "**"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("`", "`"), ("*", "*"),
           ("_", "_"))


def _unwrap(body: str) -> str:
    """Remove quotes or emphasis wrapped around the whole text, twice at most (e.g. *"..."*)."""
    for _ in range(2):
        for left, right in _QUOTES:
            inner = body[len(left): len(body) - len(right)]
            wrapped = len(body) >= len(left) + len(right) and body.startswith(left) and body.endswith(right)
            # Emphasis around a quoted question (*"..."*) is markup even when the maths inside uses "*".
            quoted = left in "*_**" and inner[:1] in "\"“'" and inner[-1:] in "\"”'"
            if wrapped and (quoted or (left not in inner and right not in inner)):
                body = inner.strip()
                break
    return body


def parse_final_question(reply: str) -> str | None:
    """The question under the reply's last `Final Question` heading, cleaned of markup; None if missing or empty."""
    if not isinstance(reply, str):
        return None
    text = _LEADING_ROLE.sub("", reply.replace("\r\n", "\n"), count=1)
    text = _ROLE_TOKEN.split(text, maxsplit=1)[0]
    heads = list(_HEADING.finditer(text))
    if not heads:
        return None
    body = text[heads[-1].end():].strip()
    # The section ends at the next heading or horizontal rule (a trailing note the model added anyway).
    nxt = _NEXT_SECTION.search(body, pos=1)
    if nxt:
        body = body[: nxt.start()].strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    lines = body.splitlines()
    if lines and all(line.lstrip().startswith(">") for line in lines if line.strip()):
        body = "\n".join(re.sub(r"^[ \t]*>[ \t]?", "", line) for line in lines).strip()
    body = _unwrap(_LABEL.sub("", body, count=1).strip())
    return body or None


# --- backends --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ChatRequest:
    id: str
    messages: list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class ChatResult:
    id: str
    text: str | None
    error: str | None
    cached: bool = False
    # "stop", or "length" when the reply hit max_tokens (never a chosen question: its final section may be cut).
    finish_reason: str | None = None


class ChatBackend(Protocol):
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...


def _reply_text(body: str) -> tuple[str | None, str | None, str | None]:
    """(content, finish_reason, None) from a chat-completions response body, or (None, None, why it is unusable)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        return None, None, f"malformed JSON in the response ({e.msg} at char {e.pos}): {body[:80]!r}"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return None, None, f"response has no choices: {body[:120]!r}"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        return None, None, "response has empty content"
    finish = choices[0].get("finish_reason")
    return content, finish if isinstance(finish, str) else None, None


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, `sq-jax serve`, ...) with a thread pool and an
    on-disk cache.

    Retries are the `openai` client's own (`max_retries`, `timeout`): it retries 408/409/429/5xx, timeouts and
    dropped connections with exponential backoff and jitter, and honours `Retry-After`. Successful replies are
    cached as one JSON file per request, keyed by everything that determines the reply, so a rerun never pays
    twice; errors are not cached, so a rerun retries them.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 5,
        concurrency: int = 8,
        cache_dir: str | Path | None = None,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        seed: int | None = 0,
    ):
        key = os.environ.get(api_key_env, "")
        if not key:
            raise ValueError(
                f"optimise: the API key environment variable {api_key_env} is not set; export it "
                "(any non-empty value for a local server that needs no key) or pass api_key_env=..."
            )
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("optimise: need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        import openai  # here, so the rest of sq-jax never needs the client installed

        self._openai = openai
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)
        self.model, self.timeout_s, self.max_retries, self.concurrency = model, timeout_s, max_retries, concurrency
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        fields = {"model": self.model, "messages": messages, "temperature": self.temperature,
                  "max_tokens": self.max_tokens, "seed": self.seed}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_get(self, key: str) -> tuple[str, str | None] | None:
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("optimise: ignoring unreadable cache file %s (%s)", path, e)
            return None
        text = entry.get("text") if isinstance(entry, dict) and entry.get("key") == key else None
        return (text, entry.get("finish_reason")) if isinstance(text, str) and text else None

    def _cache_put(self, key: str, messages: list[dict[str, str]], text: str, finish: str | None) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                 "seed": self.seed, "messages": messages, "text": text, "finish_reason": finish}
        with atomic_open(self.cache_dir / f"{key}.json") as f:  # a killed run never leaves a half-written entry
            f.write(json.dumps(entry, ensure_ascii=False, indent=1))

    def _call(self, messages: list[dict[str, str]]) -> tuple[str | None, str | None, str | None]:
        """(text, finish_reason, None) or (None, None, error) once the client's retries are spent; never raises
        for the service."""
        oa = self._openai
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, temperature=self.temperature,
                                      max_tokens=self.max_tokens)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        attempts = f"after {self.max_retries + 1} attempts"
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
        except oa.APIStatusError as e:  # a 4xx the client does not retry, or a retryable status to the end
            return None, None, f"HTTP {e.status_code} ({attempts} at most): {str(e)[:200]}"
        except oa.APITimeoutError:
            return None, None, f"timed out after {self.timeout_s} s, {attempts}"
        except oa.APIConnectionError as e:
            return None, None, f"connection error {attempts}: {e.__cause__ or e}"
        # Parsed by hand: a malformed body becomes an error result instead of a client exception.
        return _reply_text(raw.text)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in request order; identical requests are sent (and paid for) once."""
        results: list[ChatResult | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = self.cache_key(request.messages)
            hit = self._cache_get(key)
            if hit is not None:
                results[i] = ChatResult(request.id, hit[0], None, cached=True, finish_reason=hit[1])
            else:
                todo.setdefault(key, []).append(i)

        def work(key: str) -> tuple[str, str | None, str | None, str | None]:
            messages = requests[todo[key][0]].messages
            text, finish, error = self._call(messages)
            if text is not None:
                self._cache_put(key, messages, text, finish)
            return key, text, finish, error

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool, \
                tqdm(total=len(todo), desc="optimise", unit="req", disable=None) as bar:
            for key, text, finish, error in pool.map(work, list(todo)):
                for i in todo[key]:
                    results[i] = ChatResult(requests[i].id, text, error, cached=False, finish_reason=finish)
                bar.update(1)
        return [r for r in results if r is not None]


class LocalBackend:
    """An sq-jax model as the optimiser: chat-rendered prompts through the raw engine loop, seeded per request id."""

    def __init__(self, model_path: str, *, engine: EngineSettings | None = None, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 1024, seed: int = 0):
        from sq_jax.sampling.sampling import SamplingParams
        from sq_jax.sampling.server import EngineSettings, build_engine

        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        self.seed = seed
        self.engine = build_engine(model_path, engine or EngineSettings(), self.sampling, jetstream_api=False)
        self.prompt_format = self.engine.prompt_format

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        from sq_jax.models.tokenizer import encode_prompt
        from sq_jax.sampling.generate_job import cut_at_stop, request_seed
        from sq_jax.sampling.loop import Request, run_loop

        tokenizer, fmt = self.engine.hf_tokenizer, self.prompt_format
        results: list[ChatResult | None] = [None] * len(requests)
        batch = []
        for i, request in enumerate(requests):
            try:
                prompt = fmt.chat(request.messages, add_generation_prompt=True)
            except ValueError as e:  # a malformed message fails its own request, not the batch
                results[i] = ChatResult(request.id, None, f"bad messages: {e}")
                continue
            # Seeded by id, so a reply does not depend on batching, order or resumption.
            sampling = dataclasses.replace(self.sampling, seed=request_seed(self.seed, request.id))
            batch.append(Request(encode_prompt(tokenizer, prompt), sampling, id=i))
        for done in run_loop(self.engine, batch):
            rid = requests[done.id].id
            if done.finish_reason == "error":
                results[done.id] = ChatResult(rid, None, done.error or "engine error")
                continue
            text, _ = cut_at_stop(tokenizer.decode(done.token_ids), list(fmt.stop_strings))
            results[done.id] = (ChatResult(rid, text, None, finish_reason=done.finish_reason) if text.strip()
                                else ChatResult(rid, None, "empty reply"))
        return [r for r in results if r is not None]


# --- the stage -------------------------------------------------------------------------------------------------
def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def optimise(
    records: Sequence[dict], backend: ChatBackend, *, seed: int, question_field: str = "question",
    id_field: str = "id", directions: Sequence[str] = DIRECTIONS,
) -> tuple[list[dict], dict[str, int]]:
    """Rewrite every record's question; preference pairs (chosen = rewrite, rejected = original) and counters.

    Each question goes one of `directions` (the paper: both, half each), chosen per question by `choose_direction`.

    Every input id ends in exactly one of: `pairs`, `errors`, `dropped_truncated` (the reply hit max_tokens: its
    final question may be cut, so it is never a chosen side), `dropped_unparsable`, `dropped_unchanged`.
    """
    allowed = check_directions(directions)
    requests, originals, picked = [], [], []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if id_field not in record or question_field not in record:
            raise ValueError(f"optimise: record {index} lacks the {id_field!r} or {question_field!r} field; "
                             f"it has {sorted(record)}")
        rid, question = str(record[id_field]), record[question_field]
        if not isinstance(question, str):
            raise ValueError(f"optimise: record {rid!r}: {question_field!r} must be a string, "
                             f"got {type(question).__name__}")
        if rid in seen:
            raise ValueError(f"optimise: duplicate id {rid!r} (record {index}); ids must be unique")
        seen.add(rid)
        direction = choose_direction(rid, seed, allowed)
        requests.append(ChatRequest(rid, optimiser_messages(question, direction)))
        originals.append(question)
        picked.append(direction)
    stats = {name: 0 for name in ("requests", "cached", "errors", "dropped_truncated", "dropped_unparsable",
                                  "dropped_unchanged", "pairs")}
    stats |= {f"{kind}_{d}": 0 for kind in ("requests", "pairs") for d in DIRECTIONS}
    results = backend.complete(requests)
    if [r.id for r in results] != [r.id for r in requests]:
        raise RuntimeError(f"optimise: backend {type(backend).__name__} returned results for other ids or in "
                           "another order than the requests")
    pairs, examples = [], []
    for request, original, direction, result in zip(requests, originals, picked, results):
        stats["requests"] += 1
        stats[f"requests_{direction}"] += 1
        stats["cached"] += result.cached
        if result.text is None:
            stats["errors"] += 1
            examples.append(f"{request.id}: {result.error}")
            continue
        if result.finish_reason == "length":
            stats["dropped_truncated"] += 1
            continue
        rewrite = parse_final_question(result.text)
        if rewrite is None:
            stats["dropped_unparsable"] += 1
        elif _normalise(rewrite) == _normalise(original):
            stats["dropped_unchanged"] += 1  # no preference signal in a pair of equal questions
        else:
            stats["pairs"] += 1
            stats[f"pairs_{direction}"] += 1
            pairs.append({"id": request.id, "chosen": rewrite, "rejected": original, "direction": direction,
                          "optimiser_reply": result.text})
    if examples:
        log.warning("optimise: %d of %d requests failed, e.g. %s", len(examples), len(requests),
                    "; ".join(examples[:3]))
    return pairs, stats
