"""`sq-jax serve [CONFIG] [a.b=c ...]`: a YAML, the flags over it, the overrides over both, checked as one
ServeConfig (a typo is an error naming the key), as `generate`, the trainers and `eval` take theirs."""

from __future__ import annotations

import pytest

from sq_jax.cli import build_parser, serve_config
from sq_jax.configlib import ConfigError
from sq_jax.sampling.engine_factory import EngineSettings
from sq_jax.sampling.sampling import SamplingParams


def _config(*argv: str):
    return serve_config(build_parser().parse_args(["serve", *argv]))


def test_flags_alone_give_what_the_old_flag_defaults_gave():
    cfg = _config("--model", "runs/tiny")
    assert cfg.engine == EngineSettings() and cfg.grpc_port == 9000 and cfg.http_port == 8000
    assert cfg.default_sampling() == SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=512)
    fronts = cfg.fronts({"SQ_JAX_API_KEY": "k"})
    assert (fronts.host, fronts.model_name, fronts.api_key, fronts.grpc_port) == ("127.0.0.1", "tiny", "k", 9000)


def test_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: runs/qwen\nhttp_port: 8001\nengine: {max_slots: 16, decode_steps: 4, dtype: float32}\n"
                    "sampling: {temperature: 0.7}\n")
    cfg = _config(str(path), "engine.decode_steps=2", "--max-slots", "8", "--port", "0")
    assert (cfg.model, cfg.http_port, cfg.grpc_port) == ("runs/qwen", 8001, 0)
    assert (cfg.engine.max_slots, cfg.engine.decode_steps, cfg.engine.dtype) == (8, 2, "float32")
    assert cfg.default_sampling().temperature == 0.7 and cfg.fronts({}).grpc_port is None  # 0: no gRPC front
    assert cfg.fronts({}).api_key is None
    only_overrides = _config("model=runs/qwen", "engine.max_slots=4")
    assert only_overrides.model == "runs/qwen" and only_overrides.engine.max_slots == 4


def test_a_typo_or_a_missing_model_is_an_error_naming_it(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: runs/qwen\nengine: {max_slot: 16}\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml.*max_slot"):
        _config(str(path))
    with pytest.raises(ValueError, match="a model is required"):
        _config("--http-port", "8001")

