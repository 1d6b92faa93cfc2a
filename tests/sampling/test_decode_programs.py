"""What the engine's programs compute, beyond their values: a prefill applies the LM head to the last prompt
token only, and the raw loop keeps the next decode block running while the host reads the last one."""

from __future__ import annotations

import numpy as np
import pytest

from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.sampling.engine import Engine, settings_of
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams

CFG = ModelConfig(family="qwen2", vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=12, qkv_bias=True)
STEPS = 4


@pytest.fixture(scope="module")
def engine():
    return Engine(init_model(CFG, seed=0), stop_ids=[95], max_slots=2, max_cache_length=40, max_prefill_length=16,
                  decode_steps=STEPS, prefix_cache_size=0)


def test_prefill_applies_the_lm_head_to_the_last_prompt_token_only(engine):
    """The head over every prompt position was a quarter of the prefill's work at the 100M shape (its vocabulary
    is a quarter of the weights) and a [rows, bucket, vocab] float32 array; only the last row is sampled from."""
    tokens, lengths = np.ones((2, 16), np.int32), np.array([5, 16], np.int32)
    batch = engine._state.prefill_batch(False).lower(engine.params, tokens, lengths).as_text()
    assert "tensor<2x16x96xf32>" not in batch and "tensor<2x1x96xf32>" in batch
    single = engine._state.prefill(False).lower(engine.params, tokens[0], np.int32(5), None,
                                                settings_of(SamplingParams(temperature=0.0))).as_text()
    assert "tensor<1x16x96xf32>" not in single and "tensor<1x1x96xf32>" in single


class _Recorder:
    """The engine, with each decode block's dispatch and each read of its result written to `events`."""

    def __init__(self, engine: Engine):
        self._engine, self.events = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def decode_block(self, state):
        state, result = self._engine.decode_block(state)
        self.events.append("dispatch")
        return state, _ReadRecorder(result, self.events)


class _ReadRecorder:
    def __init__(self, result, events):
        self._result, self._events = result, events

    def copy_to_host_async(self):
        self._result.copy_to_host_async()

    def __array__(self, dtype=None, copy=None):
        self._events.append("read")
        return np.asarray(self._result, dtype)


def test_raw_loop_dispatches_the_next_block_before_reading_the_last_when_nothing_is_pending(engine):
    """Reading each block before dispatching the next left the device idle during the host's turn; no block is
    dispatched past the request's max_tokens."""
    recorder = _Recorder(engine)
    request = Request([3, 8, 1, 40], SamplingParams(temperature=0.0, max_tokens=4 * STEPS))
    [done] = run_loop(recorder, [request])
    assert recorder.events == ["dispatch", "dispatch", "read", "dispatch", "read", "dispatch", "read", "read"]
    assert done.finish_reason == "length" and len(done.token_ids) == 4 * STEPS
