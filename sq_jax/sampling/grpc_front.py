"""JetStream's gRPC protocol on an sq-jax driver, with statuses a client can act on.

JetStream's own servicer let every error escape as `UNKNOWN` with a traceback, and its server bound `[::]` and
waited a silent 10 s grace period on stop. Here a bad request is `INVALID_ARGUMENT` (message naming the field)
before it is queued, a full queue `RESOURCE_EXHAUSTED`, a shutdown `UNAVAILABLE`, a request that failed in
prefill `INTERNAL`; the server binds the host it is given and stops within the grace period it is given.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc

from sq_jax.sampling.jetstream_compat import ShuttingDownError, jetstream
from sq_jax.sampling.metrics import ServingMetrics


@functools.cache
def _servicer_class() -> type:
    js = jetstream()
    pb2 = js.jetstream_pb2

    class Servicer(js.orchestrator.LLMOrchestrator):
        def __init__(self, driver: Any, metrics: ServingMetrics | None):
            super().__init__(driver=driver)
            self._metrics = metrics
            self.open_calls = 0  # Decode calls not yet ended (read by the stop, on the same event loop)

        async def Decode(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
            self.open_calls += 1
            try:
                async for response in self._decode(request, context):
                    yield response
            finally:
                self.open_calls -= 1

        async def _decode(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            channel = js.orchestrator.async_multifuture.AsyncMultifuture()
            context.add_done_callback(channel.cancel)  # the client left: the driver frees its slot
            which = request.WhichOneof("content")
            if which is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "DecodeRequest needs text_content or token_content")
            content, client_tokens = self._get_prefill_content(request)
            active = js.orchestrator.ActiveRequest(
                max_tokens=request.max_tokens, history_path=request.session_cache, prefill_content=content,
                is_client_side_tokenization=client_tokens, return_channel=channel)
            try:
                self._driver.place_request_on_prefill_queue(active)
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except ShuttingDownError as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            except queue.Full:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "the request queue is full; retry later")
            buffered: list = []
            first = True
            try:
                async for samples in channel:
                    if first and self._metrics is not None:
                        self._metrics.time_to_first_token.labels("grpc").observe(time.perf_counter() - start)
                    first = False
                    if client_tokens:
                        yield self.process_client_side_tokenization_response(samples)
                    elif self.should_buffer_response(samples):
                        buffered.append(samples)
                    else:
                        yield self.process_server_side_tokenization_response(samples, buffered)
                        buffered = []
            except ShuttingDownError as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            except Exception as e:  # noqa: BLE001 - the request failed in the driver (prefill): say why
                await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
            if self._metrics is not None:
                self._metrics.latency.labels("grpc").observe(time.perf_counter() - start)

        async def HealthCheck(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            return pb2.HealthCheckResponse(is_live=bool(self._driver.live and self._driver.accepting))

    return Servicer


class GrpcFront:
    """A grpc.aio server on its own event loop thread, serving JetStream's Orchestrator over `driver`."""

    def __init__(self, driver: Any, host: str, port: int, *, threads: int = 64,
                 metrics: ServingMetrics | None = None):
        js = jetstream()
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=threads))
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-front", daemon=True)
        self._thread.start()

        self._servicer = _servicer_class()(driver, metrics)

        async def start() -> tuple[Any, int]:
            server = grpc.aio.server()
            js.jetstream_pb2_grpc.add_OrchestratorServicer_to_server(self._servicer, server)
            bound = server.add_insecure_port(f"{host}:{port}")
            await server.start()
            return server, bound

        self._server, bound = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        if bound == 0:
            raise OSError(f"gRPC: could not bind {host}:{port}")
        self.address = f"{host}:{bound}"

    def stop(self, grace: float) -> None:
        """Stop taking RPCs; open ones get up to `grace` seconds to end (the driver fails them first: this is the
        time their statuses take to reach the clients), then are cut."""
        async def stop() -> None:
            deadline = time.monotonic() + grace
            while self._servicer.open_calls and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await self._server.stop(0)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
