"""The sampling engine: cached greedy decoding per family, sample reproducibility, prefixes, errors, sharding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hf_tiny
from sq_jax.models.hf_io import load_pretrained
from sq_jax.models.init import init_model
from sq_jax.models.config import ModelConfig
from sq_jax.parallel.mesh import make_mesh
from sq_jax.sampling.engine import Engine, PromptTooLongError
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams, request_key, sample_token, token_key

CFG = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, qkv_bias=True)
PROMPT = [5, 9, 2, 33, 17]


@nnx.jit
def _forward(model, ids, segment_ids):
    return model(ids, None, segment_ids).logits


def full_forward_greedy_check(model, prompt, tokens, stop_ids, length=48):
    """Each generated token is the argmax of an uncached forward pass over everything before it."""
    seq = list(prompt)
    for tok in tokens + [None]:
        ids = np.zeros((1, length), np.int32)
        ids[0, : len(seq)] = seq
        seg = (np.arange(length) < len(seq)).astype(np.int32)[None]
        best = int(np.argmax(np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(seg)))[0, len(seq) - 1]))
        if tok is None:  # generation ended: by a stop token or by max_tokens
            return best
        assert tok == best
        seq.append(tok)


def _family_models(tmp_path_factory):
    out = {}
    for variant in ("llama_gqa", "llama3_rope", "mistral_window", "qwen2_tied"):
        path = hf_tiny.save(hf_tiny.make_model(variant), tmp_path_factory.mktemp(variant) / "hf")
        out[variant] = path
    tensors, config = hf_tiny.llama_to_internlm2(hf_tiny.make_model("llama_gqa", seed=3))
    path = tmp_path_factory.mktemp("internlm2") / "hf"
    hf_tiny.write_checkpoint(path, tensors, config)
    out["internlm2"] = path
    return out


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    return _family_models(tmp_path_factory)


@pytest.mark.parametrize("variant", ["llama_gqa", "llama3_rope", "mistral_window", "qwen2_tied", "internlm2"])
def test_greedy_with_cache_equals_full_forward_argmax(family_models, variant):
    model = load_pretrained(family_models[variant])
    stop = [hf_tiny.VOCAB - 1]
    engine = Engine(model, stop_ids=stop, max_slots=4, max_cache_length=48, max_prefill_length=16, decode_steps=3)
    prompts = [[7, 8, 9, 10, 11, 12, 13], [20, 21, 22]]
    outs = run_loop(engine, [Request(p, SamplingParams(temperature=0.0, max_tokens=20)) for p in prompts])
    for prompt, out in zip(prompts, outs):
        nxt = full_forward_greedy_check(model, prompt, out.token_ids, stop)
        if out.finish_reason == "stop":
            assert nxt in stop
        else:
            assert out.finish_reason == "length" and len(out.token_ids) == 20


@pytest.fixture(scope="module")
def engine():
    return Engine(init_model(CFG, seed=1), stop_ids=[63], max_slots=8, max_cache_length=64, max_prefill_length=32,
                  decode_steps=4)


def test_seeded_sample_is_identical_alone_in_batch_and_in_any_slot(engine):
    target = Request(PROMPT, SamplingParams(temperature=1.0, top_p=0.9, top_k=20, max_tokens=16, seed=11))
    others = [Request([1 + i, 2, 3], SamplingParams(temperature=1.0, seed=100 + i, max_tokens=16)) for i in range(7)]
    alone = run_loop(engine, [target])[0].token_ids
    first = run_loop(engine, [target] + others)[0].token_ids  # slot 0
    last = run_loop(engine, others + [target])[-1].token_ids  # slot 7
    more = run_loop(engine, others + others + [target])[-1].token_ids  # after slots were reused
    assert len(alone) > 5 and alone == first == last == more
    different_seed = run_loop(engine, [Request(PROMPT, SamplingParams(temperature=1.0, top_p=0.9, top_k=20,
                                                                      max_tokens=16, seed=12))])[0].token_ids
    assert different_seed != alone


def full_forward_sample_reference(model, prompt, sampling: SamplingParams, count: int, length=48) -> list[int]:
    """The first `count` tokens of a seeded request, each sampled from an uncached forward pass with the
    request's key for that token index."""
    seq, key = list(prompt), request_key(sampling.seed)
    for index in range(count):
        ids = np.zeros((1, length), np.int32)
        ids[0, : len(seq)] = seq
        seg = (np.arange(length) < len(seq)).astype(np.int32)[None]
        logits = _forward(model, jnp.asarray(ids), jnp.asarray(seg))[0, len(seq) - 1]
        seq.append(int(sample_token(logits, token_key(key, index), sampling.temperature, sampling.top_p,
                                    sampling.top_k)))
    return seq[len(prompt):]


def test_sampled_decoding_matches_full_forward_after_greedy_blocks():
    """Greedy-only traffic runs the greedy block; the first sampled request switches the engine to the
    sampling block, and its tokens are those of an uncached forward pass sampled with its own keys."""
    model = init_model(CFG, seed=1)
    engine = Engine(model, stop_ids=[], max_slots=4, max_cache_length=48, max_prefill_length=16, decode_steps=4)
    greedy = run_loop(engine, [Request(PROMPT, SamplingParams(temperature=0.0, max_tokens=8))])[0].token_ids
    assert not engine.sampling_admitted
    assert greedy == full_forward_sample_reference(model, PROMPT, SamplingParams(temperature=0.0), 8)
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=40, max_tokens=12, seed=5)
    mixed = run_loop(engine, [Request(PROMPT, sampling), Request([3, 4], SamplingParams(temperature=0.0,
                                                                                        max_tokens=12))])
    assert engine.sampling_admitted
    assert mixed[0].token_ids == full_forward_sample_reference(model, PROMPT, sampling, 12)
    assert mixed[0].token_ids[:8] != greedy
    assert mixed[1].token_ids == full_forward_sample_reference(model, [3, 4], SamplingParams(temperature=0.0), 12)


def test_decode_steps_per_call_do_not_change_outputs():
    model = init_model(CFG, seed=1)
    reqs = [Request([i + 1, 5, 7], SamplingParams(temperature=1.0, seed=i, max_tokens=9)) for i in range(5)]
    outs = []
    for steps in (1, 4, 16):
        e = Engine(model, stop_ids=[63], max_slots=4, max_cache_length=64, max_prefill_length=32, decode_steps=steps)
        outs.append([(c.token_ids, c.finish_reason) for c in run_loop(e, reqs)])
    assert outs[0] == outs[1] == outs[2]
    assert all(len(t) == 9 or r == "stop" for t, r in outs[0])


def test_shared_prompt_is_prefilled_once(engine):
    before = dict(engine.stats)
    prompt = [40, 41, 42, 43]
    reqs = [Request(prompt, SamplingParams(temperature=1.0, seed=s, max_tokens=6)) for s in range(10)]
    outs = run_loop(engine, reqs)
    assert engine.stats["prefills"] - before["prefills"] == 1
    assert engine.stats["prefix_hits"] - before["prefix_hits"] == 9
    assert len({tuple(o.token_ids) for o in outs}) > 1  # n samples of one prompt differ by seed


def test_existing_prefix_continues_a_prefill(engine):
    a, b = [3, 4, 5, 6, 7], [8, 9, 10]
    pad = lambda ids: engine.pad_to_bucket(ids)  # noqa: E731
    first = engine.prefill(params=engine.params, padded_tokens=pad(a)[0], true_length=len(a))
    both = engine.prefill(params=engine.params, padded_tokens=pad(b)[0], true_length=len(b), existing_prefix=first)
    whole = engine.prefill(params=engine.params, padded_tokens=pad(a + b)[0], true_length=len(a + b))
    np.testing.assert_allclose(np.asarray(both.logits), np.asarray(whole.logits), atol=1e-5)
    assert int(both.length) == 8


def test_prompt_limits_and_bad_requests(engine):
    long = list(range(1, 41))
    with pytest.raises(PromptTooLongError, match="prompt has 40 tokens, more than max_prefill_length=32"):
        engine.fit_prompt(long)
    outs = run_loop(engine, [Request(long, SamplingParams(max_tokens=4)), Request(PROMPT, SamplingParams(max_tokens=4))])
    assert outs[0].finish_reason == "error" and "max_prefill_length" in outs[0].error
    assert outs[1].finish_reason in ("length", "stop") and outs[1].error is None  # the others carry on
    truncating = Engine(init_model(CFG, seed=1), stop_ids=[63], max_slots=2, max_cache_length=64,
                        max_prefill_length=32, overlong_prompt="truncate_left")
    assert truncating.fit_prompt(long) == long[-32:] and truncating.stats["truncated_prompts"] == 1
    with pytest.raises(ValueError, match=r"stop token ids \[64\] are not ids of this vocabulary \(size 64\)"):
        Engine(init_model(CFG), stop_ids=[64])
    with pytest.raises(ValueError, match="exceeds the cache length 64"):
        engine.prefill_request(PROMPT, SamplingParams(max_tokens=60))


def test_sharded_engine_matches_single_device(engine):
    mesh = make_mesh(4, 1, 2)
    model = init_model(CFG, mesh=mesh, seed=1)
    sharded = Engine(model, stop_ids=[63], max_slots=8, max_cache_length=64, max_prefill_length=32, decode_steps=4,
                     mesh=mesh)
    state = sharded.init_decode_state()
    assert state.cache.k[0].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
    reqs = [Request([i + 2, 9, 4], SamplingParams(temperature=t, seed=i, max_tokens=10))
            for i, t in enumerate([0.0, 1.0, 0.7, 1.0, 0.0, 1.0])]
    with jax.set_mesh(mesh):
        got = [c.token_ids for c in run_loop(sharded, reqs)]
    assert got == [c.token_ids for c in run_loop(engine, reqs)]


def test_decode_state_keeps_the_layout_its_programs_were_compiled_for(engine):
    """init, insert and generate all take and return the state in the formats chosen for it; forced to a
    non-default layout (head_dim-major K, as a TPU might pick), outputs are unchanged and nothing relays out."""
    from jax.experimental.layout import Format, Layout

    reqs = [Request([i + 3, 8, 1], SamplingParams(temperature=t, seed=i, max_tokens=9))
            for i, t in enumerate([0.0, 1.0, 0.8])]
    expected = [c.token_ids for c in run_loop(engine, reqs)]
    chosen = engine._state.formats(engine.sampling_admitted)
    assert engine.init_decode_state().cache.k[0].format == chosen.cache.k[0]

    forced_engine = Engine(init_model(CFG, seed=1), stop_ids=[63], max_slots=8, max_cache_length=64,
                           max_prefill_length=32, decode_steps=4)
    default = forced_engine._state.formats(False)
    transposed = lambda f: Format(Layout(major_to_minor=(0, 1, 3, 2)), f.sharding)  # noqa: E731
    forced = default.replace(cache=default.cache.replace(k=tuple(transposed(f) for f in default.cache.k)))
    forced_engine._state._formats, forced_engine._state._generate = forced, {}
    assert [c.token_ids for c in run_loop(forced_engine, reqs)] == expected
    state = forced_engine.init_decode_state()
    state = forced_engine.insert(forced_engine.prefill_request([5, 6], SamplingParams(max_tokens=4)), state, 2)
    state, _ = forced_engine.decode_block(state)
    assert state.cache.k[0].format.layout.major_to_minor == (0, 1, 3, 2)
    assert state.cache.v[0].format == default.cache.v[0]
