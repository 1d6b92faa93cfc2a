"""`sq-jax serve`: JetStream's gRPC server over an sq-jax engine, bound to loopback unless told otherwise."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any

import jax

from sq_jax.models.checkpoint import load_model
from sq_jax.models.tokenizer import detect_prompt_format, get_prompt_format, load_tokenizer, stop_token_ids
from sq_jax.parallel.mesh import make_mesh
from sq_jax.sampling.jetstream_compat import jetstream, jetstream_engine_class, make_driver
from sq_jax.sampling.sampling import SamplingParams

log = logging.getLogger(__name__)
_bind_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    max_slots: int = 64
    max_cache_length: int = 2048
    max_prefill_length: int = 1024
    decode_steps: int = 8
    overlong_prompt: str = "error"  # or "truncate_left"
    prefix_cache_size: int = 32
    dtype: str = "bfloat16"
    prompt_format: str | None = None
    mesh_data: int = 1
    mesh_fsdp: int = 1
    mesh_tensor: int = -1
    # A tokenizer shipped as Python code in the model repository (InternLM2) runs only when allowed.
    trust_remote_code: bool = False


def build_engine(model_path: str, settings: EngineSettings, default_sampling: SamplingParams,
                 jetstream_api: bool = True) -> Any:
    """Load a model (HF or native) onto its mesh and wrap it in an engine (JetStream-capable by default)."""
    # This host's devices only: on a multi-host slice each host serves its own share of the requests.
    mesh = make_mesh(settings.mesh_data, settings.mesh_fsdp, settings.mesh_tensor, devices=jax.local_devices())
    model = load_model(model_path, mesh=mesh, dtype=settings.dtype, param_dtype=settings.dtype)
    tokenizer = load_tokenizer(str(getattr(model, "model_dir", model_path)),
                               trust_remote_code=settings.trust_remote_code, setting="engine.trust_remote_code")
    fmt = get_prompt_format(settings.prompt_format) if settings.prompt_format else detect_prompt_format(tokenizer)
    kwargs = dict(
        stop_ids=stop_token_ids(tokenizer, fmt), max_slots=settings.max_slots,
        max_cache_length=settings.max_cache_length, max_prefill_length=settings.max_prefill_length,
        decode_steps=settings.decode_steps, overlong_prompt=settings.overlong_prompt,
        prefix_cache_size=settings.prefix_cache_size, mesh=mesh,
    )
    if jetstream_api:
        engine = jetstream_engine_class()(model, tokenizer, default_sampling=default_sampling, **kwargs)
    else:
        from sq_jax.sampling.engine import Engine

        engine = Engine(model, **kwargs)
        engine.hf_tokenizer, engine.default_sampling = tokenizer, default_sampling
    engine.prompt_format = fmt
    return engine


class Server:
    """A running JetStream gRPC server; `stop()` shuts down the driver threads and the gRPC server."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 9000, threads: int | None = None):
        import grpc

        js = jetstream()
        self.driver = make_driver(engine)
        with _bind_lock:
            # JetStream binds f"{_HOST}:{port}" at construction; choose the host instead of its "[::]".
            saved, js.server_lib._HOST = js.server_lib._HOST, host
            try:
                self._server = js.server_lib.JetStreamServer(
                    self.driver, threads or max(2 * engine.max_slots, 64), port, grpc.insecure_server_credentials()
                )
            finally:
                js.server_lib._HOST = saved
        self._server.start()
        self.address = f"{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


def serve_forever(server: Server) -> None:
    """Block until SIGINT / SIGTERM, then stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
