"""The one door to JetStream (google-jetstream 0.2.2): import it lazily and fix what it gets wrong on current JAX.

- `jax.tree_map` is gone from JAX but the orchestrator calls it: shim it.
- Importing the orchestrator sets the root logger to DEBUG with a stdout handler: undo that.
- `engine_api` pulls seqio and TensorFlow: only imported here, only when serving; TF logs are silenced.
- The server binds `[::]`: we bind a host we choose (loopback by default).
- Prefill errors killed the process (JetThread SIGKILLs); here they fail that request only.
- Requests carry no sampling settings and token requests get a BOS prepended: `SqDriver` reads per-request
  sampling (JSON in `session_cache`) and tokenizes without adding special tokens.
- Requests were checked only in the prefill thread, after queueing: `SqDriver` checks them (settings, token ids,
  lengths) when they are placed, and refuses new ones while shutting down.
- A slot was freed only when its request completed, so a cancelled request (its client gone) held it until
  `max_tokens`: `SqDriver` frees it at the next decode block.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sq_jax.sampling.engine import Engine
from sq_jax.sampling.engine_core import result_logprobs
from sq_jax.sampling.sampling import SamplingParams, sampling_from_request

log = logging.getLogger(__name__)
_import_lock = threading.Lock()


@functools.cache
def jetstream() -> Any:
    """Import JetStream's modules with the fixes applied; returns a namespace of them."""
    with _import_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if not hasattr(jax, "tree_map"):
            jax.tree_map = jax.tree.map
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        # JetStream (and the TensorFlow it pulls in through seqio) loads on first use only, here.
        from jetstream.core import orchestrator, server_lib
        from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc
        from jetstream.engine import engine_api, token_utils, tokenizer_api, tokenizer_pb2

        root.setLevel(level)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for name in ("jetstream", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return _Namespace(orchestrator=orchestrator, server_lib=server_lib, engine_api=engine_api,
                      token_utils=token_utils, tokenizer_api=tokenizer_api, tokenizer_pb2=tokenizer_pb2,
                      jetstream_pb2=jetstream_pb2, jetstream_pb2_grpc=jetstream_pb2_grpc)


@dataclasses.dataclass
class _Namespace:
    orchestrator: Any
    server_lib: Any
    engine_api: Any
    token_utils: Any
    tokenizer_api: Any
    tokenizer_pb2: Any
    jetstream_pb2: Any
    jetstream_pb2_grpc: Any


@functools.cache
def _classes() -> tuple[type, type, type]:
    js = jetstream()

    class HFTokenizer(js.tokenizer_api.Tokenizer):
        """A Hugging Face tokenizer behind JetStream's Tokenizer API, stopping on the family's stop ids."""

        def __init__(self, tokenizer: Any, stop_ids: tuple[int, ...]):
            self.hf = tokenizer
            self._stop = set(stop_ids)

        def encode(self, s: str, **kwargs: Any):
            ids = self.hf(s, add_special_tokens=False)["input_ids"]
            return jnp.asarray(ids, jnp.int32), len(ids)

        def decode(self, token_ids: list[int], **kwargs: Any) -> str:
            return self.hf.decode(token_ids)

        @property
        def pad_id(self) -> int:
            return int(self.hf.pad_token_id if self.hf.pad_token_id is not None else 0)

        @property
        def eos_id(self) -> int:
            return int(self.hf.eos_token_id)

        @property
        def bos_id(self) -> int:
            return int(self.hf.bos_token_id if self.hf.bos_token_id is not None else self.pad_id)

        @property
        def stop_tokens(self) -> set[int]:
            return self._stop

    class JetStreamEngine(Engine, js.engine_api.Engine):
        """`Engine` as a JetStream engine: results wrapped in ResultTokens, a HF tokenizer plugged in."""

        def __init__(self, model: Any, tokenizer: Any, *, default_sampling: SamplingParams, **kwargs: Any):
            Engine.__init__(self, model, **kwargs)
            self.hf_tokenizer = tokenizer
            self.default_sampling = default_sampling
            # JetStream's generate thread runs ahead of detokenization, so after every request has hit its
            # max_tokens it would decode one more block for nobody. The host knows each slot's last block.
            self._blocks = 0
            self._last_block: dict[int, int] = {}
            self._idle = np.zeros((self.max_slots, 3 * self.decode_steps + 1), np.int32)

        def insert(self, prefix: Any, decode_state: Any, slot: int) -> Any:
            prefix = prefix.prefix if isinstance(prefix, _Kept) else prefix
            blocks = -(-int(prefix.max_tokens) // self.decode_steps)
            self._last_block[slot] = self._blocks + blocks
            return Engine.insert(self, prefix, decode_state, slot)

        def generate(self, params: Any, decode_state: Any):
            k = self.decode_steps
            if any(end > self._blocks for end in self._last_block.values()):
                state, data = self.decode_block(decode_state, params)
                self._blocks += 1
            else:  # every slot is past its max_tokens: the device would only emit invalid tokens
                state, data = decode_state, self._idle
            return state, js.engine_api.ResultTokens(
                data=data, tokens_idx=(0, k), valid_idx=(k, 2 * k), length_idx=(2 * k, 2 * k + 1),
                samples_per_slot=1,
            )

        def release(self, slot: int) -> None:
            """The slot's request is gone: decode blocks are no longer needed for it."""
            self._last_block.pop(slot, None)

        def get_tokenizer(self):
            return js.tokenizer_pb2.TokenizerParameters(path="huggingface")

        def build_tokenizer(self, metadata: Any) -> HFTokenizer:
            return HFTokenizer(self.hf_tokenizer, self.stop_ids)

    class SqDriver(js.orchestrator.Driver):
        """JetStream's driver with per-request sampling, exact tokenization and failures kept to one request."""

        def __init__(self, *args: Any, **kwargs: Any):
            self.accepting = True
            self.generated_tokens = 0  # tokens handed to clients (for throughput metrics)
            self._live_requests: dict[int, dict[int, Any]] = {}  # generate engine -> slot -> request
            self._in_prefill: Any = None  # the request the prefill thread holds, between the queues
            # Every request taken and not yet answered, by id: the queues and slots alone miss one that a thread
            # holds between two of them (for seconds while an insert compiles), which a shutdown must fail too.
            self._placed: dict[int, Any] = {}
            self._placed_prune_at = 64
            super().__init__(*args, **kwargs)  # starts the threads
            # JetStream queues at most slots // 3 prefilled requests for the generate thread, so when many
            # requests finish together their slots refill over several decode blocks. Let a whole batch wait.
            # (Queue.put reads `maxsize` on every call, so raising it on the live queues is safe.)
            for engine, backlog in zip(self._generate_engines, self._generate_backlogs.values()):
                backlog.maxsize = max(backlog.maxsize, engine.max_concurrent_decodes)
            for backlog in self._transfer_backlogs:
                backlog.maxsize = max(backlog.maxsize, 16)
            # The generate thread may run up to 8 blocks ahead of detokenization, and a slot is only freed when
            # detokenization sees its request end: finished requests then hold their slots for blocks. Keep the
            # generate thread at most one block ahead, as the raw loop is.
            for backlog in self._detokenize_backlogs:
                backlog.maxsize = 1

        def check_request(self, request: Any) -> None:
            """Parse and check a request in the caller's thread: a ValueError names what is wrong."""
            engine = self._prefill_engines[0]
            request.sampling = sampling_from_request(request.history_path or "", request.max_tokens,
                                                     engine.default_sampling)
            request.max_tokens = request.sampling.max_tokens
            content = request.prefill_content
            ids = engine.hf_tokenizer(content, add_special_tokens=False)["input_ids"] \
                if isinstance(content, str) else list(content)
            request.prefill_content = engine.check_request(ids, request.sampling)

        def place_request_on_prefill_queue(self, request: Any) -> None:
            """Check, then queue; raises ValueError (bad request), ShuttingDownError, or queue.Full (no room)."""
            if not self.accepting:
                raise ShuttingDownError("the server is shutting down and takes no new requests")
            if getattr(request, "sampling", None) is None:  # fronts that checked already skip the second pass
                self.check_request(request)
            super().place_request_on_prefill_queue(request)
            self._placed[id(request)] = request
            if len(self._placed) >= self._placed_prune_at:  # amortised: the registry stays ~2x the open requests
                self.open_requests()
                self._placed_prune_at = max(64, 2 * len(self._placed))

        def _queues(self) -> tuple[Any, ...]:
            return (self._prefill_backlog, *self._transfer_backlogs, *self._generate_backlogs.values())

        def open_requests(self) -> list[Any]:
            """Requests taken and not answered yet: queued, between two queues, or decoding."""
            for key, request in list(self._placed.items()):
                if _answered(request):
                    self._placed.pop(key, None)
            return list(self._placed.values())

        def load(self) -> dict[str, int]:
            """Requests queued and running (one per slot in use) and slots in all; approximate while running.
            (The free-slot queue is no measure: an idle generate thread holds one slot while it waits for work.)"""
            return {"queued": sum(q.qsize() for q in self._queues()) + (self._in_prefill is not None),
                    "running": sum(len(live) for live in self._live_requests.values()),
                    "slots": sum(e.max_concurrent_decodes for e in self._generate_engines)}

        def _prefill_thread(self, idx: int) -> None:
            engine = self._prefill_engines[idx]
            while self.live:
                request = self._prefill_backlog.get(block=True)
                if request is None:
                    break
                if _cancelled(request):  # its client left while it waited
                    continue
                self._in_prefill = request
                try:
                    prefix = engine.prefill_request(request.prefill_content, request.sampling)
                except Exception as e:  # noqa: BLE001 - any failure of one request fails that request only
                    log.warning("request failed in prefill (%s): %s", type(e).__name__, e)
                    request.return_channel.set_exception(e)
                    self._in_prefill = None
                    continue
                # JetStream deletes every array of what it inserts; a cached prefix must survive, so it goes over
                # in a box JetStream's tree walk does not open (a device copy per request, ~2 per layer
                # dispatched one by one, was over half of the prefill thread's busy time and held the dispatch lock).
                request.prefill_result = _Kept(prefix)
                self._transfer_backlogs[idx].put(request, block=True)
                self._in_prefill = None

        def _detokenize_thread(self, idx: int) -> None:
            # JetStream's loop, plus: a cancelled request's slot goes back to the free list at the next block.
            backlog, engine = self._detokenize_backlogs[idx], self._generate_engines[idx]
            free = self._generate_slots[idx]
            tokenizer = engine.build_tokenizer(engine.get_tokenizer())
            live = self._live_requests.setdefault(idx, {})
            while self.live:
                data = backlog.get(block=True)
                if data is None:
                    break
                head, body = data
                if not isinstance(body, js.engine_api.ResultTokens):
                    live[head] = body  # (slot, request): a request was inserted into this slot
                    continue
                result = body.convert_to_numpy()
                logprobs = result_logprobs(result.data, engine.decode_steps)
                for slot, request in list(live.items()):
                    if not _cancelled(request):
                        samples, request.complete = js.token_utils.process_result_tokens(
                            tokenizer=tokenizer, slot=slot, slot_max_length=request.max_tokens, result_tokens=result,
                            complete=request.complete, is_client_side_tokenization=request.is_client_side_tokenization)
                        for sample in samples:  # JetStream's ReturnSample has no logprobs: carried beside
                            sample.logprobs = logprobs[slot, : len(sample.token_ids)].tolist()
                        self.generated_tokens += sum(len(sample.token_ids) for sample in samples)
                        request.enqueue_samples(samples)
                        if not request.complete.all():
                            continue
                        request.return_channel.close()
                    del live[slot]
                    engine.release(slot)
                    free.put(slot, block=False)

    return HFTokenizer, JetStreamEngine, SqDriver


class ShuttingDownError(RuntimeError):
    """The server is stopping: the request was not (or will not be) completed."""


@dataclasses.dataclass(frozen=True)
class _Kept:
    """A prefix handed to JetStream's generate thread: not a pytree, so its `delete_pytree` leaves it alone."""

    prefix: Any


def _answered(request: Any) -> bool:
    """Whether a request's channel was closed or failed (JetStream's AsyncMultifuture; one without `done` is
    counted open until the driver drops it)."""
    done = getattr(request.return_channel, "done", None)
    return request.return_channel is None or (done is not None and done())


def _cancelled(request: Any) -> bool:
    cancelled = getattr(request.return_channel, "cancelled", None)
    return bool(cancelled and cancelled())


def jetstream_engine_class() -> type:
    return _classes()[1]


def sq_driver_class() -> type:
    return _classes()[2]


def make_driver(engine: Any, max_queue: int = 0) -> Any:
    """An interleaved in-process driver: one engine prefills and generates (no transfer between slices).
    At most `max_queue` requests wait for prefill (0: no limit; more raise queue.Full). Call `.stop()` when done."""
    driver = sq_driver_class()(
        prefill_engines=[engine], generate_engines=[engine], prefill_params=[engine.params],
        generate_params=[engine.params], interleaved_mode=True,
    )
    driver._prefill_backlog.maxsize = max_queue  # read by every put: safe on the live queue
    return driver
