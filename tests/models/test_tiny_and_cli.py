"""The tiny embedded default and the `sq-jax` commands that build, convert and sample it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sq_jax.cli import main
from sq_jax.models.checkpoint import load_native
from sq_jax.models.hf_io import load_pretrained
from sq_jax.parallel.mesh import make_mesh
from sq_jax.prompts.formats import PROMPT_FORMATS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert main(["init-tiny", str(out)]) == 0
    return out


def test_tiny_is_a_few_million_params_and_loads_in_transformers(tiny):
    model = load_pretrained(tiny)
    assert model.config.family == "qwen2" and 1e6 < model.config.num_params() < 1e7
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    text = PROMPT_FORMATS["qwen"].qft_text("Tom has 3 apples and buys 4 more. How many apples does he have?")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="np")["input_ids"].astype(np.int32)
    assert tokenizer.convert_ids_to_tokens(int(ids[0, -1])) == "<|im_end|>"
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = torch_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids)).logits)
    assert np.abs(got - expected).max() <= 1e-4
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tiny_build_is_deterministic(tiny, tmp_path):
    assert main(["init-tiny", str(tmp_path / "again")]) == 0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny / name).read_bytes(), name


def test_convert_round_trip_is_exact(tiny, tmp_path):
    assert main(["convert", str(tiny), str(tmp_path / "native"), "--to", "orbax"]) == 0
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "native" / "tokenizer.json").is_file()


def test_native_checkpoint_restores_sharded(tiny, tmp_path):
    assert main(["convert", str(tiny), str(tmp_path / "native"), "--to", "orbax"]) == 0
    reference = load_pretrained(tiny)
    mesh = make_mesh(1, 4, 2)
    model = load_native(tmp_path / "native", mesh=mesh)
    up = model.layers[2].mlp.up_proj[...]
    assert up.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert up.addressable_shards[0].data.shape == (704 // 2, 256 // 4)
    np.testing.assert_array_equal(np.asarray(up), np.asarray(reference.layers[2].mlp.up_proj[...]))


def test_sample_command_prints_questions(tiny):
    result = subprocess.run(
        [sys.executable, "-m", "sq_jax.cli", "sample", "--model", str(tiny), "--num", "2", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["prompt"].endswith("<|im_start|>user\n") for r in rows)
    assert rows[0]["output"] != rows[1]["output"]  # sampled with temperature 1


def test_a_missing_model_path_says_so_and_how_to_build_it(tmp_path, capsys, monkeypatch):
    """`sq-jax qft configs/qft/tiny.yaml` before `init-tiny`: "runs/tiny" is no folder, and the hub (offline in the
    tests; unreachable or without it elsewhere) has no such model either: say that, not the hub's error."""
    config = Path(__file__).resolve().parents[2] / "configs/qft/tiny.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["qft", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"runs/tiny: no such model directory ({tmp_path / 'runs/tiny'})" in err, err
    assert "sq-jax init-tiny runs/tiny" in err and "LocalEntryNotFoundError" in err
    assert main(["sample", "--model", "./missing/model"]) == 2
    assert "sq-jax init-tiny ./missing/model" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["convert", str(tmp_path / "bad"), str(tmp_path / "out"), "--to", "orbax"]) == 2
    assert "unsupported model_type 'bert'" in capsys.readouterr().err
