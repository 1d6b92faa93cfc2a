"""A small client for `sq-jax serve`: text or token requests, streamed back, with per-request sampling."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from sq_jax.sampling.sampling import SamplingParams, sampling_to_session_cache


@dataclasses.dataclass
class Reply:
    token_ids: list[int]
    text: str  # streamed text pieces joined (exact text: decode token_ids with the model's tokenizer)


def _stubs():
    # Only the generated proto modules: no engine, no TensorFlow.
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc

    return jetstream_pb2, jetstream_pb2_grpc


def make_request(prompt: str | Sequence[int], sampling: SamplingParams | None = None):
    """A JetStream DecodeRequest; sampling settings travel as JSON in `session_cache` (sq-jax's extension)."""
    pb2, _ = _stubs()
    sampling = sampling or SamplingParams()
    kwargs = dict(max_tokens=sampling.max_tokens, session_cache=sampling_to_session_cache(sampling))
    if isinstance(prompt, str):
        return pb2.DecodeRequest(text_content=pb2.DecodeRequest.TextContent(text=prompt), **kwargs)
    return pb2.DecodeRequest(token_content=pb2.DecodeRequest.TokenContent(token_ids=list(prompt)), **kwargs)


class Client:
    def __init__(self, address: str = "127.0.0.1:9000", timeout: float = 300.0):
        import grpc  # here: importing this module (for make_request) loads no gRPC runtime

        _, pb2_grpc = _stubs()
        self._channel = grpc.insecure_channel(address)
        self._stub = pb2_grpc.OrchestratorStub(self._channel)
        self.timeout = timeout

    def stream(self, prompt: str | Sequence[int], sampling: SamplingParams | None = None) -> Iterator[Reply]:
        for response in self._stub.Decode(make_request(prompt, sampling), timeout=self.timeout):
            sample = response.stream_content.samples[0]
            yield Reply(list(sample.token_ids), sample.text)

    def generate(self, prompt: str | Sequence[int], sampling: SamplingParams | None = None) -> Reply:
        tokens, text = [], []
        for piece in self.stream(prompt, sampling):
            tokens += piece.token_ids
            text.append(piece.text)
        return Reply(tokens, "".join(text))

    def health(self) -> bool:
        pb2, _ = _stubs()
        return bool(self._stub.HealthCheck(pb2.HealthCheckRequest(), timeout=self.timeout).is_live)

    def close(self) -> None:
        self._channel.close()
