"""The OpenAI-compatible HTTP API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) on an sq-jax driver.

FastAPI parses and checks requests (pydantic models below); the driver is the one the gRPC front uses, so both
fronts share slots, queue and prefix cache. Each of a request's `n` samples is one driver request seeded
`seed + i` (its prompt is prefilled once: the others hit the engine's prefix cache). Stop strings are matched on
the decoded text; a request that meets one, or whose client disconnects, is cancelled and its slot freed at the
next decode block. Errors are OpenAI error objects: 400 naming the field, 401, 429 (queue full), 503 (stopping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import queue
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sq_jax.sampling.engine_factory import LoadedEngine
from sq_jax.sampling.jetstream_compat import ShuttingDownError, jetstream
from sq_jax.sampling.metrics import ServingMetrics
from sq_jax.sampling.sampling import SamplingParams


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `user`: accepted by OpenAI, meaningless here

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension (vLLM's name)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**31)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    return_token_ids: bool = False  # extension (vLLM's name): each choice carries its generated token ids


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]]
    # The number of top alternatives per token (OpenAI allows 0-5); 0 gives the sampled tokens' own.
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False

    def wants_logprobs(self) -> bool:
        if self.logprobs:
            raise APIError(400, "logprobs: only 0 is served (each sampled token's own log-probability); the decode "
                                "block does not compute top alternatives", "logprobs")
        return self.logprobs is not None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def wants_logprobs(self) -> bool:
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
        if self.top_logprobs:
            raise APIError(400, "top_logprobs: only 0 is served (each sampled token's own log-probability); the "
                                "decode block does not compute top alternatives", "top_logprobs")
        return bool(self.logprobs)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None,
                   kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return error_response(400, f"malformed JSON body: {first.get('msg')}")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    # A union (prompt: str | list[int] ...) reports its member type after the field: keep the field.
    param = loc[0] if loc else None
    return error_response(400, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", param)


@dataclasses.dataclass
class _Sample:
    """One of a request's choices: its driver request and what it produced so far."""

    index: int
    prompt: int  # which of the request's prompts
    active: Any
    prompt_tokens: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


class OpenAIFront:
    def __init__(self, driver: Any, loaded: LoadedEngine, *, model_name: str, api_key: str | None = None,
                 metrics: ServingMetrics | None = None):
        self.driver, self.engine, self.model_name = driver, loaded.engine, model_name
        self.tokenizer, self.format, self.default_sampling = loaded.tokenizer, loaded.prompt_format, \
            loaded.default_sampling
        self._api_key, self.metrics = api_key or None, metrics
        self._js = jetstream()

    # ------------------------------------------------------------------------------------------ the app
    def app(self) -> FastAPI:
        app = FastAPI(title="sq-jax", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_exception_handler(RequestValidationError, lambda _, exc: _validation_error(exc))
        app.add_exception_handler(APIError, lambda _, e: error_response(e.status, e.message, e.param, e.kind))

        # A dependency, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware wraps every `receive` of
        # every open request in a task group, and under 1,000 open requests that was a fifth of the event loop's
        # time (py-spy), time the driver's threads waited for the GIL.
        guarded = {"dependencies": [Depends(self._authorise)]}
        app.get("/health")(self._health)
        app.get("/metrics", **guarded)(self._metrics)
        app.get("/v1/models", **guarded)(self._models)
        app.post("/v1/completions", **guarded)(self.completions)
        app.post("/v1/chat/completions", **guarded)(self.chat_completions)
        return app

    async def _authorise(self, request: Request) -> None:
        if self._api_key and not self._authorised(request):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error")

    def _authorised(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self._api_key.encode())

    async def _health(self) -> JSONResponse:
        ok = bool(self.driver.live and self.driver.accepting)
        return JSONResponse({"status": "ok" if ok else "stopping"}, 200 if ok else 503)

    async def _metrics(self) -> Response:
        if self.metrics is None:
            raise APIError(404, "metrics are off")
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def _models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "sq-jax"}]}

    # ------------------------------------------------------------------------------------- endpoints
    async def completions(self, body: CompletionBody, request: Request) -> Response:
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "prompt is empty", "prompt")
        encoded = [self._encode(p, "prompt") for p in prompts]
        return await self._answer(body, request, encoded, self._stops(body), chat=False)

    async def chat_completions(self, body: ChatBody, request: Request) -> Response:
        try:
            text = self.format.chat([m.model_dump() for m in body.messages], add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages") from e
        # The turn-end strings of the chat format end the reply even where the tokenizer splits them.
        stops = self._stops(body) + [s for s in self.format.stop_strings if s]
        return await self._answer(body, request, [self._encode(text, "messages")], stops, chat=True)

    # ----------------------------------------------------------------------------------- the request
    def _encode(self, prompt: str | list[int], field: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else prompt
        try:
            return self.engine.fit_prompt(ids)
        except ValueError as e:
            raise APIError(400, f"{field}: {e}", field) from e

    @staticmethod
    def _stops(body: _Body) -> list[str]:
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stops):
            raise APIError(400, "stop: stop strings must be non-empty", "stop")
        return stops

    def _sampling(self, body: _Body, prompt_tokens: int) -> SamplingParams:
        default = self.default_sampling
        room = self.engine.max_cache_length - prompt_tokens
        max_tokens = body.max_tokens if body.max_tokens is not None else min(default.max_tokens, room)
        if max_tokens > room:
            raise APIError(400, f"max_tokens: the prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) "
                                f"exceeds the context length {self.engine.max_cache_length}", "max_tokens")
        if max_tokens < 1:
            raise APIError(400, f"prompt: {prompt_tokens} tokens leave no room to generate in the context "
                                f"length {self.engine.max_cache_length}", "prompt")
        seed = random.randrange(2**31 - body.n) if body.seed is None else body.seed
        if seed + body.n > 2**31:
            raise APIError(400, "seed: sample i of n is seeded seed + i, so seed + n must be <= 2**31", "seed")
        pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
        return SamplingParams(temperature=pick(body.temperature, default.temperature),
                              top_p=pick(body.top_p, default.top_p), top_k=pick(body.top_k, default.top_k),
                              max_tokens=max_tokens, seed=seed)

    def _submit(self, body: _Body, prompts: Sequence[list[int]]) -> list[_Sample]:
        if body.model != self.model_name:
            raise APIError(400, f"model: unknown model {body.model!r}; this server serves {self.model_name!r}",
                           "model", "invalid_request_error")
        orchestrator = self._js.orchestrator
        samples: list[_Sample] = []
        try:
            for p, ids in enumerate(prompts):
                sampling = self._sampling(body, len(ids))
                for j in range(body.n):
                    active = orchestrator.ActiveRequest(
                        max_tokens=sampling.max_tokens, prefill_content=ids, is_client_side_tokenization=True,
                        return_channel=orchestrator.async_multifuture.AsyncMultifuture())
                    active.sampling = dataclasses.replace(sampling, seed=sampling.seed + j)
                    self.driver.place_request_on_prefill_queue(active)
                    samples.append(_Sample(p * body.n + j, p, active, len(ids)))
        except BaseException as e:
            for sample in samples:  # all of a request's samples run, or none
                sample.active.return_channel.cancel()
            if isinstance(e, queue.Full):
                raise APIError(429, "the request queue is full; retry later", kind="rate_limit_error") from e
            if isinstance(e, ShuttingDownError):
                raise APIError(503, str(e), kind="server_error") from e
            raise
        return samples

    async def _run(self, sample: _Sample, stops: list[str]) -> AsyncIterator[str]:
        """Text deltas of one sample as its tokens arrive; sets its finish reason at the end."""
        emitted, hold = 0, max((len(s) for s in stops), default=1) - 1
        channel = sample.active.return_channel
        try:
            async for pieces in channel:
                sample.tokens += pieces[0].token_ids
                sample.logprobs += pieces[0].logprobs
                text = self.tokenizer.decode(sample.tokens)
                cut = min((i for i in (text.find(s, max(emitted - hold, 0)) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    sample.text, sample.finish_reason = text[:cut], "stop"
                    channel.cancel()  # the rest is not wanted: free the slot
                    break
                safe = len(text) - hold if not text.endswith("\ufffd") else len(text) - hold - 1
                sample.text = text
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        except ShuttingDownError as e:
            raise APIError(503, str(e), kind="server_error") from e
        except Exception as e:
            if isinstance(e, APIError):
                raise
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from e
        if sample.finish_reason is None:
            sample.finish_reason = "length" if len(sample.tokens) >= sample.active.max_tokens else "stop"
        if len(sample.text) > emitted:
            yield sample.text[emitted:]

    async def _answer(self, body: _Body, request: Request, prompts: list[list[int]], stops: list[str],
                      chat: bool) -> Response:
        start = time.perf_counter()
        wants_logprobs = body.wants_logprobs()
        samples = self._submit(body, prompts)
        token_text = self.tokenizer.batch_decode if wants_logprobs else None
        shape = _Shape(chat, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()), self.model_name,
                       body.return_token_ids, token_text)
        if body.stream:
            return StreamingResponse(self._stream(samples, stops, shape, start), media_type="text/event-stream")
        collect = asyncio.ensure_future(asyncio.gather(*(self._drain(s, stops, start) for s in samples)))
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not collect.done():  # the client left
                collect.cancel()
            for sample in samples:  # the client left, or a sample failed: stop the others
                if sample.finish_reason is None:
                    sample.active.return_channel.cancel()
        if not collect.done() or collect.cancelled():
            return Response(status_code=499)
        collect.result()  # re-raises a failed sample's APIError
        self._observe("latency", start)
        return JSONResponse(shape.full(samples))

    async def _drain(self, sample: _Sample, stops: list[str], start: float) -> None:
        first = True
        async for _ in self._run(sample, stops):
            if first:
                self._observe("time_to_first_token", start)
                first = False

    async def _stream(self, samples: list[_Sample], stops: list[str], shape: _Shape,
                      start: float) -> AsyncIterator[str]:
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(sample: _Sample) -> None:
            try:
                async for delta in self._run(sample, stops):
                    await merged.put((sample, delta))
                await merged.put((sample, None))
            except APIError as e:
                await merged.put((sample, e))

        tasks = [asyncio.ensure_future(pump(s)) for s in samples]
        first, open_samples = True, len(samples)
        sent = [0] * len(samples)  # per sample: tokens whose logprobs a chunk has carried

        def since(sample: _Sample) -> tuple[int, int]:  # the tokens a chunk carries logprobs for, then moves on
            span = (sent[sample.index], len(sample.logprobs))
            sent[sample.index] = span[1]
            return span

        try:
            if shape.chat:
                for s in samples:
                    yield _sse(shape.chunk(s, "", (0, 0), role=True))
            while open_samples:
                sample, item = await merged.get()
                if isinstance(item, APIError):
                    yield _sse({"error": {"message": item.message, "type": item.kind, "param": None, "code": None}})
                    return
                if item is None:
                    open_samples -= 1
                    yield _sse(shape.chunk(sample, "", since(sample), finish=True))
                    continue
                if first:
                    self._observe("time_to_first_token", start)
                    first = False
                yield _sse(shape.chunk(sample, item, since(sample)))
            # Every answer carries usage: streamed ones in a last chunk without choices (OpenAI's include_usage).
            yield _sse({**shape.head(chunk=True), "choices": [], "usage": _usage(samples)})
            yield "data: [DONE]\n\n"
            self._observe("latency", start)
        finally:  # also when the client disconnects mid-stream: its samples stop and free their slots
            for task in tasks:
                task.cancel()
            for sample in samples:
                if sample.finish_reason is None:
                    sample.active.return_channel.cancel()

    def _observe(self, name: str, start: float) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels("http").observe(time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The OpenAI response objects of one request (completion or chat, whole or chunked)."""

    chat: bool
    id: str
    created: int
    model: str
    token_ids: bool
    token_text: Callable[[list[list[int]]], list[str]] | None = None  # batch_decode, when logprobs were asked

    def head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _logprobs(self, sample: _Sample, start: int, end: int) -> dict | None:
        """OpenAI's logprobs object for the sample's tokens [start, end): the sampled tokens' own log-probabilities
        under the model (before temperature, top-k, top-p), no alternatives."""
        if self.token_text is None:
            return None
        pieces = self.token_text([[t] for t in sample.tokens[start:end]])
        values = sample.logprobs[start:end]
        if self.chat:
            return {"content": [{"token": p, "logprob": v, "bytes": list(p.encode("utf-8")), "top_logprobs": []}
                                for p, v in zip(pieces, values)], "refusal": None}
        return {"tokens": pieces, "token_logprobs": values, "top_logprobs": None, "text_offset": None}

    def _choice(self, sample: _Sample, text: str, finish: str | None, span: tuple[int, int] | None = None) -> dict:
        """One choice; `span` is the range of the sample's tokens whose logprobs it carries (default: all)."""
        start, end = span if span is not None else (0, len(sample.tokens))
        choice: dict[str, Any] = {"index": sample.index, "finish_reason": finish,
                                  "logprobs": self._logprobs(sample, start, end)}
        if not self.chat:
            choice["text"] = text
        if self.token_ids and finish is not None:
            choice["token_ids"] = sample.tokens
        return choice

    def full(self, samples: list[_Sample]) -> dict:
        choices = []
        for s in samples:
            choice = self._choice(s, s.text, s.finish_reason)
            if self.chat:
                choice["message"] = {"role": "assistant", "content": s.text}
            choices.append(choice)
        return {**self.head(chunk=False), "choices": choices, "usage": _usage(samples)}

    def chunk(self, sample: _Sample, text: str, span: tuple[int, int], finish: bool = False,
              role: bool = False) -> dict:
        choice = self._choice(sample, text, sample.finish_reason if finish else None, span)
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": ""} if role else ({} if finish else {"content": text})
        return {**self.head(chunk=True), "choices": [choice]}


def _usage(samples: list[_Sample]) -> dict:
    prompt = sum({s.prompt: s.prompt_tokens for s in samples}.values())  # each prompt once, however many n
    completion = sum(len(s.tokens) for s in samples)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _until_disconnected(request: Request) -> None:
    """Return when the client leaves. Starlette tells a plain (non-streaming) endpoint nothing then, but the
    request's body is read, so the server's next ASGI message for it is `http.disconnect`: wait for that (polling
    `is_disconnected()` once a second per open request cost the event loop a sixth of its time under load)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
