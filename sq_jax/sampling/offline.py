"""Offline batch generation through JetStream's in-process driver, with a bounded window of requests in flight."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from sq_jax.sampling.jetstream_compat import jetstream, make_driver
from sq_jax.sampling.loop import Completion, Request
from sq_jax.sampling.sampling import sampling_to_session_cache


class _ReturnChannel:
    """Duck-typed stand-in for JetStream's AsyncMultifuture: collects token ids on the driver's threads."""

    def __init__(self, index: int, request: Request, done: Callable[[int, Completion], None]):
        self.index, self.request, self._done = index, request, done
        self.token_ids: list[int] = []
        self._answered = False

    def done(self) -> bool:  # AsyncMultifuture's: the driver forgets answered requests by it
        return self._answered

    def add_result(self, samples: list) -> None:
        self.token_ids.extend(samples[0].token_ids)

    def close(self) -> None:
        limit = self.request.sampling.max_tokens
        reason = "length" if len(self.token_ids) >= limit else "stop"
        self._answered = True
        self._done(self.index, Completion(self._id(), self.token_ids[:limit], reason))

    def set_exception(self, error: BaseException) -> None:
        self._answered = True
        self._done(self.index, Completion(self._id(), [], "error", f"{type(error).__name__}: {error}"))

    def _id(self) -> object:
        return self.request.id if self.request.id is not None else self.index


def run_driver(
    engine,
    requests: Iterable[Request],
    *,
    window: int | None = None,
    on_complete: Callable[[Completion], None] | None = None,
) -> list[Completion]:
    """Generate every request through JetStream's orchestrator; completions in request order.

    At most `window` requests (default: twice the slots) are queued or decoding at once, so memory stays
    bounded however many requests stream in.
    """
    js = jetstream()
    if not hasattr(engine, "build_tokenizer"):
        raise TypeError("run_driver needs a JetStream engine: build it with jetstream_compat.jetstream_engine_class() "
                        "or engine_factory.build_engine(...).engine")
    window = window or 2 * engine.max_slots
    slots = threading.Semaphore(window)
    results: dict[int, Completion] = {}
    lock = threading.Lock()
    all_done = threading.Condition(lock)

    def done(index: int, completion: Completion) -> None:
        with all_done:
            results[index] = completion
            all_done.notify_all()
        slots.release()
        if on_complete is not None:
            on_complete(completion)

    driver = make_driver(engine)
    submitted = 0
    try:
        for index, request in enumerate(requests):
            slots.acquire()
            channel = _ReturnChannel(index, request, done)
            active = js.orchestrator.ActiveRequest(
                max_tokens=request.sampling.max_tokens,
                return_channel=channel,
                history_path=sampling_to_session_cache(request.sampling),
                prefill_content=list(request.token_ids),
                is_client_side_tokenization=True,
            )
            try:
                driver.place_request_on_prefill_queue(active)
            except ValueError as e:
                channel.set_exception(e)
            submitted += 1
        with all_done:
            all_done.wait_for(lambda: len(results) == submitted)
    finally:
        driver.stop()  # its detokenize threads are not daemons: without this the interpreter never exits
    return [results[i] for i in range(submitted)]
