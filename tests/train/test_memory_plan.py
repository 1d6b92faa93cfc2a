"""The memory plan: within 15% of XLA's memory analysis of the compiled train step (tiny shape, full and LoRA);
what it says the backward keeps within 15% of JAX's saved residuals under every remat policy;
a config too big for one v5e chip is refused naming what to change; the Colab config fits v5e-1 stage by stage."""

from __future__ import annotations

import types
from pathlib import Path

import jax
import pytest
import yaml

from sq_jax.cli import main
from sq_jax.configlib import from_dict
from sq_jax.models.transformer import REMAT_POLICIES
from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.plan import model_shape, plan_config, refuse_unfit_stages
from sq_jax.toy.tiny import tiny_config
from sq_jax.train import memory_plan
from sq_jax.train.config import PROJECTIONS, TrainConfig
from sq_jax.train.memory_check import compiled_train_bytes, saved_residual_bytes
from sq_jax.train.memory_plan import GiB, TrainShape, backward_residual_bytes, parse_device, too_big, train_plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("rank", [None, 8], ids=["full", "lora"])
def test_plan_is_within_15_percent_of_the_compiled_step_for_the_tiny_shape(rank):
    cfg = tiny_config(2048, dtype="float32")
    shape = TrainShape(seq_len=256, micro_batch=4, param_dtype="float32", remat="none", lora_rank=rank,
                       lora_targets=PROJECTIONS if rank else ())
    xla = compiled_train_bytes(cfg, shape)
    plan = train_plan(cfg, shape)
    assert abs(plan.total / xla["peak"] - 1) < 0.15, (plan.rows, xla)
    # LoRA: the arguments are the frozen base plus adapters and their moments, not three copies of every weight.
    if rank:
        assert xla["arguments"] < 1.2 * plan.rows["params"] + plan.rows["optimizer"]


@pytest.mark.parametrize(("rank", "dtype"), [(None, "float32"), (8, "bfloat16")], ids=["full-f32", "lora-bf16"])
def test_what_the_plan_says_the_backward_keeps_is_within_15_percent_of_the_saved_residuals(rank, dtype):
    # JAX's own list of what the backward keeps under each remat policy (traced, compiler independent): the
    # check of the remat estimate the CPU compile cannot give (XLA:CPU's temps barely shrink under remat).
    cfg = tiny_config(2048, dtype=dtype)
    kept = {}
    for remat in REMAT_POLICIES:
        shape = TrainShape(seq_len=128, micro_batch=2, param_dtype=dtype, remat=remat, lora_rank=rank,
                           lora_targets=PROJECTIONS if rank else ())
        saved = saved_residual_bytes(cfg, shape)
        kept[remat] = backward_residual_bytes(cfg, shape.seq_len, remat, rank, shape.lora_targets) * 2 * 128
        assert abs(kept[remat] / saved["activations"] - 1) < 0.15, (remat, kept[remat], saved)
        assert saved["fixed"] < 0.01 * saved["activations"], saved  # nothing else scales the check
    assert kept["full"] < kept["dots_no_batch"] < kept["dots"] < kept["none"]


def _train_yaml(path: Path, **train) -> Path:
    cfg = {"task": "sft", "output_dir": str(path.parent / "out"), "global_batch_size": 32, "micro_batch_size": 4,
           "model": {"path": "Qwen/Qwen2.5-Math-1.5B-Instruct", "dtype": "bfloat16", "param_dtype": "float32"},
           "data": {"sources": [{"path": "data.jsonl"}], "max_length": 1024}, "mesh": {"data": 1, "fsdp": -1}}
    for key, value in train.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_full_fine_tuning_of_1_5b_is_refused_on_v5e_1_with_what_to_change(tmp_path, capsys):
    config = _train_yaml(tmp_path / "full.yaml")
    assert main(["plan", str(config), "--device", "v5e-1"]) == 2
    err = capsys.readouterr().err
    assert "does not fit v5e-1" in err and "stage 'train' needs" in err
    assert "lora: {rank: 16}" in err and "model.param_dtype: bfloat16" in err
    assert "micro_batch_size" in err  # activations of 4 x 1024 tokens without remat are a big share too
    # The same run on eight chips (fsdp shards weights and moments) or with LoRA fits.
    assert main(["plan", str(config), "--device", "v5e-8"]) == 0
    lora = _train_yaml(tmp_path / "lora.yaml", lora={"rank": 16},
                       model={"param_dtype": "bfloat16", "remat": "full"})
    assert main(["plan", str(lora), "--device", "v5e-1"]) == 0
    assert "18.5M trainable of 1543.7M params" in capsys.readouterr().out


def _one_chip(monkeypatch, gib: int) -> None:
    chip = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": gib * GiB}, device_kind="TPU v5 lite")
    monkeypatch.setattr(jax, "local_devices", lambda: [chip])
    monkeypatch.setattr(jax, "device_count", lambda: 1)


def test_the_trainer_and_the_pipeline_refuse_at_start_on_a_chip_too_small(tmp_path, monkeypatch):
    cfg = from_dict(TrainConfig, yaml.safe_load(_train_yaml(tmp_path / "full.yaml").read_text()))
    _one_chip(monkeypatch, 16)
    with pytest.raises(ValueError, match=r"this TPU v5 lite has 16 GiB.*lora: \{rank: 16\}"):
        memory_plan.refuse_if_too_big(cfg, model_shape("Qwen/Qwen2.5-Math-1.5B-Instruct", dtype="bfloat16"))
    colab = load_pipeline(CONFIGS / "pipeline" / "colab-v5e-1.yaml")
    refuse_unfit_stages(colab, list(colab.stages))  # fits 16 GB
    _one_chip(monkeypatch, 8)  # an 8 GB chip: the long-sequence training stages do not fit
    with pytest.raises(ValueError, match=r"stage 'qpo' needs 9\.3 GiB.*micro_batch_size") as info:
        refuse_unfit_stages(colab, list(colab.stages))
    assert "stage 'student'" in str(info.value) and "stage 'qft'" not in str(info.value)


def test_the_colab_config_fits_one_v5e_chip_in_every_stage():
    device = parse_device("v5e-1")
    plans = {p.stage: p for p in plan_config(CONFIGS / "pipeline" / "colab-v5e-1.yaml", (), "v5e-1")}
    assert {"qft", "qpo", "scorer", "student", "qpo_questions", "qpo_pairs", "questions", "solvable", "labels",
            "responses", "rewards", "eval"} <= set(plans)
    for plan in plans.values():
        assert too_big(plan, device) is None, plan
        assert plan.total < 0.9 * 16 * GiB
    assert plans["qpo_pairs"].rows["kv_cache"] == 2 * 28 * 64 * 2048 * 2 * 128 * 2  # layers x K,V x slots x ...
    assert plans["student"].notes == ("18.5M trainable of 1543.7M params",)
