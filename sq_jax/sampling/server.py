"""`sq-jax serve`: JetStream's gRPC protocol and the OpenAI HTTP API over one sq-jax engine and driver, bound to
loopback unless told otherwise; SIGTERM drains open requests for a short grace period, fails the rest, exits."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time

from collections.abc import Mapping
from pathlib import Path

from sq_jax.sampling.engine_factory import EngineSettings, LoadedEngine
from sq_jax.sampling.jetstream_compat import ShuttingDownError, make_driver
from sq_jax.sampling.metrics import ServingMetrics
from sq_jax.sampling.sampling import SamplingDefaults, SamplingParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FrontSettings:
    host: str = "127.0.0.1"
    grpc_port: int | None = 9000  # None: no gRPC front
    http_port: int | None = None  # None: no HTTP front
    model_name: str = "sq-jax"  # the `model` HTTP clients name
    api_key: str | None = None  # HTTP `Authorization: Bearer` key; None asks for none
    max_queue: int = 1024  # requests waiting for prefill before new ones get 429 / RESOURCE_EXHAUSTED
    shutdown_grace_s: float = 2.0  # on stop, open requests get this long to finish before they are failed
    threads: int | None = None


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """`sq-jax serve [CONFIG] [a.b=c ...]`: the model, its engine, the default sampling and the two fronts."""

    model: str
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    sampling: SamplingDefaults = dataclasses.field(default_factory=SamplingDefaults)
    host: str = "127.0.0.1"  # loopback unless told otherwise (0.0.0.0 / [::] to expose)
    grpc_port: int = 9000  # JetStream's protocol; 0: no gRPC front
    http_port: int = 8000  # the OpenAI API; 0: no HTTP front
    served_model_name: str | None = None  # the `model` HTTP clients ask for; default: the model folder's name
    api_key_env: str = "SQ_JAX_API_KEY"  # the variable holding the HTTP API key (the key itself is never in a file)
    max_queue: int = 1024
    shutdown_grace_s: float = 2.0

    def default_sampling(self) -> SamplingParams:
        return self.sampling.params()

    def fronts(self, environ: Mapping[str, str]) -> FrontSettings:
        return FrontSettings(
            host=self.host, grpc_port=self.grpc_port or None, http_port=self.http_port or None,
            model_name=self.served_model_name or Path(self.model.rstrip("/")).name,
            api_key=environ.get(self.api_key_env) or None, max_queue=self.max_queue,
            shutdown_grace_s=self.shutdown_grace_s)


class Server:
    """The running fronts over one driver; `stop()` drains, fails what is left, and releases the ports."""

    def __init__(self, loaded: LoadedEngine, fronts: FrontSettings | None = None):
        fronts = fronts or FrontSettings()
        if fronts.grpc_port is None and fronts.http_port is None:
            raise ValueError("serve: neither a gRPC nor an HTTP port: nothing to serve")
        self.fronts = fronts
        engine = loaded.engine
        self.driver = make_driver(engine, max_queue=fronts.max_queue)
        self.metrics = ServingMetrics(self.driver, engine)
        self._grpc = self._http = self._http_thread = None
        self.grpc_address = self.http_address = None
        try:
            if fronts.grpc_port is not None:
                from sq_jax.sampling.grpc_front import GrpcFront  # an HTTP-only server loads no gRPC stack

                self._grpc = GrpcFront(self.driver, fronts.host, fronts.grpc_port,
                                       threads=fronts.threads or max(2 * engine.max_slots, 64), metrics=self.metrics)
                self.grpc_address = self._grpc.address
            if fronts.http_port is not None:
                self._start_http(loaded, fronts)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return self.grpc_address or self.http_address

    def _start_http(self, loaded: LoadedEngine, fronts: FrontSettings) -> None:
        # Here, not at the top: a gRPC-only server loads neither the HTTP stack nor FastAPI.
        import uvicorn

        from sq_jax.sampling.openai_front import OpenAIFront

        app = OpenAIFront(self.driver, loaded, model_name=fronts.model_name, api_key=fronts.api_key,
                          metrics=self.metrics).app()
        config = uvicorn.Config(app, host=fronts.host, port=fronts.http_port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=max(1, int(fronts.shutdown_grace_s)))
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="http-front", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 30
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"HTTP: could not start on {fronts.host}:{fronts.http_port}")
            time.sleep(0.02)
        port = self._http.servers[0].sockets[0].getsockname()[1]
        self.http_address = f"{fronts.host}:{port}"

    def stop(self) -> None:
        """Refuse new requests, let open ones finish for the grace period, fail the rest, close everything."""
        driver = self.driver
        driver.accepting = False
        deadline = time.monotonic() + self.fronts.shutdown_grace_s
        while driver.open_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        failed: set[int] = set()
        for _ in range(3):  # a request between two queues (being inserted) shows up on a later pass
            for request in driver.open_requests():
                if id(request) not in failed and request.return_channel is not None:
                    failed.add(id(request))
                    request.return_channel.set_exception(ShuttingDownError(
                        "the server is shutting down: this request was not completed; retry it elsewhere"))
            time.sleep(0.05)
        if failed:
            log.warning("serve: shutting down, %d open requests failed", len(failed))
        if self._grpc is not None:
            self._grpc.stop(grace=2.0)  # time for the failures above to reach their clients
        if self._http is not None:
            self._http.should_exit = True
            self._http_thread.join(timeout=self.fronts.shutdown_grace_s + 5)
        # The ports are free now. The driver's threads end at their next step, which may be a decode block still
        # compiling (seconds): wait a little, not for that.
        stopper = threading.Thread(target=driver.stop, name="driver-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=3)
        if stopper.is_alive():
            log.warning("serve: the driver's threads are still busy (compiling?); not waiting for them")


def serve_forever(server: Server) -> None:
    """Block until SIGINT / SIGTERM, stop cleanly, then end the process (exit status 0)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    log.info("serve: stopped")
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is closed and the ports are free; the interpreter's teardown (TensorFlow's, XLA's and gRPC's C++
    # destructors) took another ~10 s, which a supervisor waiting on SIGTERM would count against us.
    os._exit(0)
