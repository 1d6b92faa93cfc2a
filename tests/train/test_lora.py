"""LoRA (qwix adapters over a frozen base): a step trains only the adapters, with the loss and gradients of the
hand-written W + A @ B * alpha / rank; the merged export loads in transformers and the PEFT export in peft, both
with the adapted model's logits; the QPO reference with the adapters off equals a separately loaded frozen
reference; resume after SIGKILL is exact."""

from __future__ import annotations

import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import base_config, kill_then_resume, make_config, train_losses, write_config
from sq_jax.train.step import lm_loss
from sq_jax.train.trainer import Trainer

LORA = {"lora": {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]}}
SCALE = 8.0 / 4


@pytest.fixture(scope="module")
def trained(micro_model, tmp_path_factory):
    """A LoRA run of 3 steps with the merged and PEFT exports, plus the untouched base params."""
    out = tmp_path_factory.mktemp("lora") / "run"
    trainer = Trainer(make_config(micro_model, out, **LORA, max_steps=3, **{
        "checkpoint.export_hf": True, "model.remat": "full", "optim.schedule": "constant", "optim.warmup_steps": 0}))
    base = jax.tree.map(np.asarray, trainer.frozen)
    trainer.train()
    return trainer, base, out


def _hand_weights(base: dict, adapters: dict) -> dict:
    """Base weights with every adapter added by hand: W[out..., in...] + B^T A^T * scale."""
    out = jax.tree.map(lambda x: x, base)
    for layer, modules in adapters["layers"].items():
        for module, params in modules.items():
            for name in {k.rsplit("_lora_", 1)[0] for k in params}:
                a, b = params[f"{name}_lora_a"], params[f"{name}_lora_b"]
                delta = jnp.tensordot(b, a, axes=([0], [a.ndim - 1]))  # [out..., in...]
                out["layers"][layer][module][name] = base["layers"][layer][module][name] + SCALE * delta
    return out


def test_a_lora_step_trains_only_adapters_with_the_hand_computed_loss_and_gradients(trained):
    trainer, base_at_start, _ = trained
    # Adapters as trained: every kernel in the optimizer's state is an adapter (there is no base copy there), and
    # after 3 steps B is no longer zero, so both gradients are non-trivial.
    names = {str(p[-1]) for p, _ in nnx.to_flat_state(trainer.params)}
    assert names == {f"{t}_lora_{ab}" for t in LORA["lora"]["targets"] for ab in "ab"}
    batch = trainer._device_batch(next(trainer.train_batches.iterator(None)), accumulated=True)
    micro = {k: v[0] for k, v in batch.items()}

    def ours(p):
        loss_sum, stats = trainer.task.loss_fn(nnx.merge(trainer.graphdef, p, trainer.frozen), micro)
        return loss_sum / stats["count"]

    base_plain = nnx.to_pure_dict(trainer.frozen)

    def hand(adapters):
        state = jax.tree.map(lambda x: x, trainer.frozen)  # a copy to fill with the hand-made weights
        nnx.replace_by_pure_dict(state, _hand_weights(base_plain, adapters))
        loss_sum, stats = lm_loss(nnx.merge(trainer.base_graphdef, state), micro)
        return loss_sum / stats["count"]

    loss, grads = jax.jit(jax.value_and_grad(ours))(trainer.params)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(hand))(nnx.to_pure_dict(trainer.params))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    flat_ref = dict(nnx.to_flat_state(nnx.State(ref_grads)))
    for path, g in nnx.to_flat_state(grads):
        ref = flat_ref[path]
        ref = ref.get_value() if hasattr(ref, "get_value") else ref
        assert float(jnp.abs(ref).max()) > 0, path
        np.testing.assert_allclose(g.get_value(), ref, rtol=2e-4, atol=1e-7, err_msg=str(path))

    # One more step: every adapter moves; the frozen base is what was loaded (it is no argument the step updates).
    before = jax.tree.map(np.asarray, trainer.params)
    copies = jax.tree.map(jnp.copy, (trainer.params, trainer.opt_state))  # the step donates its state
    params, _, metrics = trainer.train_step(*copies, batch, trainer.frozen)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        assert np.abs(a - np.asarray(b)).max() > 0
    for a, b in zip(jax.tree.leaves(base_at_start), jax.tree.leaves(trainer.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))


def _adapted_logits(trainer, tokens):
    return np.asarray(nnx.merge(trainer.graphdef, trainer.params, trainer.frozen)(jnp.asarray(tokens)).logits)


def test_merged_export_loads_in_transformers_with_the_adapted_logits(trained):
    import torch
    import transformers

    trainer, _, out = trained
    tokens = np.arange(3, 43, dtype=np.int64).reshape(2, 20)
    expected = _adapted_logits(trainer, tokens)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", torch_dtype=torch.float32)
    with torch.no_grad():
        got = hf(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_peft_adapter_export_loads_in_peft_onto_the_base_model(trained, micro_model):
    import peft
    import torch
    import transformers

    trainer, _, out = trained
    tokens = np.arange(5, 37, dtype=np.int64).reshape(2, 16)
    base = transformers.AutoModelForCausalLM.from_pretrained(micro_model, torch_dtype=torch.float32)
    with torch.no_grad():
        plain = base(torch.from_numpy(tokens)).logits.numpy()
    model = peft.PeftModel.from_pretrained(base, out / "adapter")
    with torch.no_grad():
        got = model(torch.from_numpy(tokens)).logits.numpy()
    expected = _adapted_logits(trainer, tokens)
    assert np.abs(expected - plain).max() > 1e-3  # the adapters changed the function
    np.testing.assert_allclose(got, expected, atol=2e-4)


QPO = {"task": "qpo", "data.sources": [{"path": "procedural-pairs:200:3"}], "data.max_length": 64,
       "data.eval_count": 0, "preference.max_pairs_per_row": 3, "optim.lr": 1e-3, "max_steps": 3,
       "preference.reference": "online", **LORA}


def test_qpo_reference_with_adapters_off_equals_a_separate_frozen_reference(micro_model, tmp_path):
    shared = Trainer(make_config(micro_model, tmp_path / "shared", **QPO))
    # No second copy: the reference scores with the very arrays of the frozen base.
    assert all(a is b for a, b in zip(jax.tree.leaves(shared.reference.params), jax.tree.leaves(shared.frozen)))
    shared.train()
    copy = shutil.copytree(micro_model, tmp_path / "reference-copy")
    separate = Trainer(make_config(micro_model, tmp_path / "separate", **QPO,
                                   **{"preference.reference_path": str(copy)}))
    assert not any(a is b for a, b in zip(jax.tree.leaves(separate.reference.params),
                                          jax.tree.leaves(separate.frozen)))
    separate.train()
    got, expected = train_losses(tmp_path / "shared"), train_losses(tmp_path / "separate")
    assert sorted(got) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=1e-6)
    assert got[3] < got[1]  # and it trains


@pytest.mark.slow
def test_lora_resumes_after_sigkill_with_the_same_losses(micro_model, tmp_path):
    overrides = {**LORA, "max_steps": 14, "checkpoint.every_steps": 1, "checkpoint.keep": 2,
                 "data.sources": [{"path": "procedural:300:5"}]}
    Trainer(make_config(micro_model, tmp_path / "straight",
                        **{**overrides, "checkpoint.every_steps": 1000})).train()
    expected = train_losses(tmp_path / "straight")
    config = write_config(tmp_path / "lora.yaml", base_config(micro_model, tmp_path / "killed", **overrides))
    kill_then_resume([sys.executable, "-m", "sq_jax.cli", "qft", str(config)], tmp_path / "killed", after_lines=6)
    got = train_losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 15))
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], atol=1e-6)


def test_lora_scorer_trains_adapters_and_its_fresh_score_head_and_exports_a_score_model(micro_model, tmp_path):
    from sq_jax.models.hf_io import load_pretrained

    scorer = {"task": "scorer", "model.head": "score", "max_steps": 3, "checkpoint.export_hf": True,
              "data.sources": [{"path": "procedural:120:4", "field_map": {"score": "steps"}}], "data.max_length": 96}
    trainer = Trainer(make_config(micro_model, tmp_path, **LORA, **scorer))
    names = {str(p[-1]) for p, _ in nnx.to_flat_state(trainer.params)}
    assert "score" in names and all(n == "score" or "_lora_" in n for n in names)
    head_before = np.asarray(trainer.params["score"][...])
    trainer.train()
    assert np.abs(np.asarray(trainer.params["score"][...]) - head_before).max() > 0
    exported = load_pretrained(tmp_path / "hf")
    assert exported.config.head == "score" and not (tmp_path / "adapter").exists()  # PEFT has no score-head LoRA
    tokens = jnp.arange(3, 35, dtype=jnp.int32).reshape(2, 16)
    np.testing.assert_allclose(np.asarray(exported(tokens).logits), _adapted_logits(trainer, tokens), atol=2e-5)


def test_adapters_keep_a_bfloat16_model_bfloat16_and_make_only_the_chosen_targets():
    from sq_jax.models.init import init_model
    from sq_jax.models.tiny import tiny_config
    from sq_jax.train.config import LoraSection
    from sq_jax.train.lora import add_adapters

    cfg = tiny_config(128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, dtype="bfloat16", param_dtype="bfloat16")
    adapted = add_adapters(init_model(cfg), LoraSection(rank=2, targets=("k_proj", "gate_proj")), None)
    hidden, _ = adapted.hidden_states(jnp.zeros((1, 4), jnp.int32))
    assert hidden.dtype == jnp.bfloat16  # float32 adapters do not promote the bfloat16 activations
    adapters = {str(p[-1]): v.get_value().dtype for p, v in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam))}
    assert adapters == {f"{t}_lora_{ab}": jnp.float32 for t in ("k_proj", "gate_proj") for ab in "ab"}
