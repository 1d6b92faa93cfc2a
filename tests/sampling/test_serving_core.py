"""The serving core against bad clients: token ids outside the vocabulary, and slots that forget their past."""

from __future__ import annotations

import numpy as np
import pytest

from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.sampling.engine import Engine
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, qkv_bias=True)
PROMPT = [5, 9, 2, 33, 17]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def engine():
    return Engine(init_model(CFG, seed=1), stop_ids=[], max_slots=2, max_cache_length=64, max_prefill_length=32,
                  decode_steps=4)


@pytest.mark.parametrize("bad, shown", [(64, "64 at position 2"), (10_000_000, "10000000 at position 2"),
                                        (-1, "-1 at position 2")])
def test_token_ids_outside_the_vocabulary_are_refused(engine, bad, shown):
    with pytest.raises(ValueError, match=r"must be in \[0, 64\).*" + shown):
        engine.check_request([5, 9, bad, 3], GREEDY)
    done = run_loop(engine, [Request([5, 9, bad, 3], GREEDY), Request(PROMPT, GREEDY)])
    assert done[0].finish_reason == "error" and shown in done[0].error
    assert done[1].finish_reason == "length" and len(done[1].token_ids) == 12


def _decode(engine, state, blocks=3) -> list[int]:
    tokens = []
    for _ in range(blocks):
        state, result = engine.decode_block(state)
        tokens += np.asarray(result)[0, : engine.decode_steps].tolist()
    return tokens


def _poisoned(engine):
    """Slot 0 after a request whose K/V are NaN over a 32-token bucket (what an id past the vocabulary gave)."""
    padded = np.zeros(32, np.int32)
    padded[:30] = 7
    prefix = engine.prefill(params=engine.params, padded_tokens=padded, true_length=30)
    nan = lambda xs: tuple(x * np.float32("nan") for x in xs)  # noqa: E731
    prefix = prefix.replace(k=nan(prefix.k), v=nan(prefix.v))
    return engine.insert(prefix, engine.init_decode_state(), 0)


def test_a_slot_keeps_nothing_of_its_previous_request(engine):
    fresh = engine.insert(engine.prefill_request(PROMPT, GREEDY), engine.init_decode_state(), 0)
    expected = _decode(engine, fresh)
    assert len(set(expected)) > 1
    # The next request's prompt fills a 16-token bucket: the old 16..31 rows must not survive it.
    after_insert = engine.insert(engine.prefill_request(PROMPT, GREEDY), _poisoned(engine), 0)
    assert _decode(engine, after_insert) == expected
    engine.clear_prefix_cache()
    after_batch = engine.insert_many([(PROMPT, GREEDY)], [0], _poisoned(engine))
    assert _decode(engine, after_batch) == expected
