"""LoRA (qwix adapters over a frozen base): a step trains only the adapters, with the loss and gradients of the
hand-written W + A @ B * alpha / rank; the merged export loads in transformers and the PEFT export in peft, both
with the adapted model's logits; the QPO reference with the adapters off equals a separately loaded frozen
reference; resume after SIGKILL is exact; adapter dropout masks the adapters' inputs in the train step only."""

from __future__ import annotations

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import base_config, kill_then_resume, make_config, train_losses, write_config
from sq_jax.train.lora import save_peft_adapter
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


DROPOUT = 0.3


@pytest.fixture(scope="module")
def dropped(trained, micro_model, tmp_path_factory):
    """A trainer like `trained`'s with adapter dropout, holding `trained`'s adapters (B is zero at the start,
    where dropout changes nothing)."""
    lora = {"lora": {**LORA["lora"], "dropout": DROPOUT}}
    trainer = Trainer(make_config(micro_model, tmp_path_factory.mktemp("dropout") / "run", **lora, max_steps=3, **{
        "model.remat": "full", "optim.schedule": "constant", "optim.warmup_steps": 0}))
    nnx.update(trainer.params, jax.tree.map(jnp.copy, trained[0].params))
    return trainer


def _first_batch(trainer) -> dict:
    return trainer._device_batch(next(trainer.train_batches.iterator(None)), accumulated=True)


def _step_loss(trainer, step_number: int) -> float:
    copies = jax.tree.map(jnp.copy, (trainer.params, trainer.opt_state))  # the step donates its state
    return float(trainer.train_step(*copies, _first_batch(trainer), trainer.frozen, step_number=step_number)[2]["loss"])


def test_adapter_dropout_changes_the_train_loss_deterministically_per_step_and_leaves_eval_and_export(
        trained, dropped, tmp_path):
    plain = trained[0]
    without = _step_loss(plain, 0)
    with_dropout = [_step_loss(dropped, 0), _step_loss(dropped, 0), _step_loss(dropped, 1)]
    assert abs(with_dropout[0] - without) > 1e-4 * abs(without)  # the masks change the training loss
    assert with_dropout[0] == with_dropout[1]  # the same seed and step draw the same masks
    assert with_dropout[2] != with_dropout[0]  # another step, other masks
    # Eval, the adapted model called outside the train step, and the merged export are deterministic: exactly
    # what the same adapters give without dropout.
    batch = {k: v[0] for k, v in _first_batch(plain).items()}
    for a, b in zip(jax.tree.leaves(dropped.eval_step(dropped.params, batch, dropped.frozen)),
                    jax.tree.leaves(plain.eval_step(plain.params, batch, plain.frozen))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = jnp.arange(3, 43, dtype=jnp.int32).reshape(2, 20)
    adapted = [_logits(nnx.merge(t.graphdef, t.params, t.frozen), tokens) for t in (dropped, plain)]
    np.testing.assert_array_equal(*adapted)
    np.testing.assert_array_equal(*[_logits(t.current_model(), tokens) for t in (dropped, plain)])  # merged export
    # PEFT's config keeps the rate (PEFT applies it when training the adapter further).
    adapters = nnx.split_state(dropped.params, nnx.LoRAParam, ...)[0]
    save_peft_adapter(adapters, dropped.model.config, dropped.cfg.lora, tmp_path, "base")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_dropout"] == DROPOUT


@nnx.jit
def _logits(model, tokens):
    return model(tokens).logits


def test_adapter_dropout_masks_each_adapter_input_with_a_mask_drawn_from_the_step_key():
    """By hand on one token (a mask over its features acts as a masked A): qwix draws, per adapted einsum in
    call order, keep ~ Bernoulli(1 - rate) from the module's stream (fold_in(key, module index)) and feeds the
    adapter x * keep / (1 - rate)."""
    from sq_jax.models.init import init_model
    from sq_jax.toy.tiny import tiny_config
    from sq_jax.train.config import LoraSection
    from sq_jax.train.lora import add_adapters, enable_dropout, merged_params

    cfg = tiny_config(64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=8, dtype="float32", param_dtype="float32")
    lora = LoraSection(rank=2, alpha=4.0, targets=("up_proj", "down_proj"), dropout=0.5)
    base = init_model(cfg)
    adapted = add_adapters(base, lora, None)
    for _, var in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)):
        var.set_value(var.get_value() + 0.5)  # B nonzero: the adapters act
    graphdef, adapters, frozen = nnx.split(adapted, nnx.LoRAParam, nnx.Param)
    token, key = jnp.asarray([[7]]), jax.random.key(3)

    def dropped(adapters):
        model = nnx.merge(graphdef, adapters, frozen)
        enable_dropout(model, key)
        return model(token).logits

    mlp_index = [path for path, _ in adapted.iter_modules()].index(("layers", 0, "mlp"))
    stream = jax.random.fold_in(key, mlp_index)
    keep = {name: jax.random.bernoulli(jax.random.fold_in(stream, call), 0.5, (width,)) / 0.5
            for call, (name, width) in enumerate([("up_proj", 16), ("down_proj", 32)])}  # call order in the MLP
    masked = jax.tree.map(lambda x: x, adapters)
    mlp = masked["layers"][0]["mlp"]
    for name, scale in keep.items():
        a = getattr(mlp, f"{name}_lora_a")
        a.set_value(a.get_value() * scale[:, None])  # A [in, rank]: x * keep @ A == x @ (keep[:, None] * A)
    hand = _logits(nnx.merge(nnx.graphdef(base), merged_params(nnx.state(base), masked, lora)), token)
    got = jax.jit(dropped)(adapters)
    assert all(0 < int((scale == 0).sum()) < scale.size for scale in keep.values())  # masks that drop some
    np.testing.assert_allclose(np.asarray(got), np.asarray(hand), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lora_resumes_after_sigkill_with_the_same_losses(micro_model, tmp_path):
    # With adapter dropout: the masks come from the seed and the step, so the resumed steps draw the same ones.
    overrides = {"lora": {**LORA["lora"], "dropout": 0.1}, "max_steps": 14, "checkpoint.every_steps": 1, "checkpoint.keep": 2,
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
    from sq_jax.toy.tiny import tiny_config
    from sq_jax.train.config import LoraSection
    from sq_jax.train.lora import add_adapters

    cfg = tiny_config(128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, dtype="bfloat16", param_dtype="bfloat16")
    adapted = add_adapters(init_model(cfg), LoraSection(rank=2, targets=("k_proj", "gate_proj")), None)
    hidden, _ = adapted.hidden_states(jnp.zeros((1, 4), jnp.int32))
    assert hidden.dtype == jnp.bfloat16  # float32 adapters do not promote the bfloat16 activations
    adapters = {str(p[-1]): v.get_value().dtype for p, v in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam))}
    assert adapters == {f"{t}_lora_{ab}": jnp.float32 for t in ("k_proj", "gate_proj") for ab in "ab"}


def test_a_float32_base_under_bfloat16_compute_is_refused_with_what_to_set(micro_model, tmp_path):
    """qwix cannot see a weight through the cast to the compute dtype (it failed deep in the first call with
    "adapters were made for []"); the config says what to set before anything loads."""
    with pytest.raises(ValueError, match=r"model.dtype=bfloat16 and model.param_dtype=float32.*"
                                         r"Set model.param_dtype: bfloat16, or model.dtype: float32"):
        make_config(micro_model, tmp_path, **LORA, **{"model.dtype": "bfloat16", "model.param_dtype": "float32"})
    make_config(micro_model, tmp_path, **LORA, **{"model.dtype": "bfloat16", "model.param_dtype": "bfloat16"})
