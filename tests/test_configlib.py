"""Config machinery: strict typed loading, overrides, `base:` inheritance, hashing."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from sq_jax.configlib import (
    ConfigError,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    load_yaml,
    parse_override,
    to_dict,
)


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass(frozen=True)
class Train:
    batch_size: int
    lr: float = 3e-4
    steps: int = 10
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cfg:
    train: Train
    name: str = "run"
    mode: Literal["qft", "qpo"] = "qft"
    seed: Optional[int] = None
    warmup: float | None = None
    sampling: Sampling | None = None
    shape: tuple[int, int, int] = (1, 2, 3)
    layers: tuple[int, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    stages: list[Train] = field(default_factory=list)
    flag: bool = False
    extra: Any = None
    out: Path = Path("runs")


def _cfg(**kw: Any) -> dict:
    return {"train": {"batch_size": 4}, **kw}


def _err(cls: type, data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(cls, data, where="configs/x.yaml")


# ---------------------------------------------------------------------------------- round trip / defaults

def test_round_trip_nested() -> None:
    cfg = Cfg(
        train=Train(batch_size=8, lr=1e-4, optim=Optim(lr=0.5, betas=(0.8, 0.9))),
        name="x", mode="qpo", seed=3, warmup=0.1, sampling=Sampling(0.7, ["</s>", "\n\n"]),
        shape=(4, 5, 6), layers=(1, 2), weights={"a": 0.5}, stages=[Train(1), Train(2, steps=5)],
        flag=True, extra={"free": [1, "form"]}, out=Path("/tmp/o"),
    )
    d = to_dict(cfg)
    assert d["shape"] == [4, 5, 6] and d["train"]["optim"]["betas"] == [0.8, 0.9]  # tuples -> lists
    assert d["out"] == "/tmp/o" and d["sampling"]["stop"] == ["</s>", "\n\n"]
    assert from_dict(Cfg, d) == cfg
    assert to_dict(from_dict(Cfg, d)) == d


def test_defaults_and_default_factory() -> None:
    cfg = from_dict(Cfg, _cfg())
    assert cfg == Cfg(train=Train(batch_size=4))
    assert cfg.train.optim == Optim() and cfg.weights == {} and cfg.stages == [] and cfg.sampling is None
    assert from_dict(Cfg, _cfg(weights={"x": 1})).weights == {"x": 1.0}
    assert from_dict(Cfg, _cfg()).weights is not from_dict(Cfg, _cfg()).weights  # fresh factory per call


def test_to_dict_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        to_dict(3)


# ---------------------------------------------------------------------------------------------- type rules

def test_int_rule() -> None:
    assert from_dict(Train, {"batch_size": 3}).batch_size == 3
    _err(Train, {"batch_size": 3.5}, r"configs/x\.yaml: key 'batch_size' expects int, got 3\.5 \(float\)")
    _err(Train, {"batch_size": True}, r"key 'batch_size' expects int, got True \(bool\)")
    _err(Train, {"batch_size": "4"}, r"key 'batch_size' expects int, got '4' \(str\)")


def test_float_rule() -> None:
    t = from_dict(Train, {"batch_size": 1, "lr": 2})
    assert t.lr == 2.0 and type(t.lr) is float
    assert from_dict(Train, {"batch_size": 1, "lr": "3e-4"}).lr == pytest.approx(3e-4)  # YAML 1.1 string form
    _err(Cfg, _cfg(train={"batch_size": 1, "lr": "abc"}),
         r"^configs/x\.yaml: key 'train\.lr' expects float, got 'abc' \(str\)$")
    _err(Train, {"batch_size": 1, "lr": False}, r"key 'lr' expects float, got False \(bool\)")
    _err(Train, {"batch_size": 1, "lr": None}, r"key 'lr' expects float, got None")


def test_bool_rule() -> None:
    assert from_dict(Cfg, _cfg(flag=True)).flag is True
    _err(Cfg, _cfg(flag=1), r"key 'flag' expects bool, got 1 \(int\)")
    _err(Cfg, _cfg(flag="yes"), r"key 'flag' expects bool, got 'yes' \(str\)")


def test_str_rule() -> None:
    assert from_dict(Cfg, _cfg(name="n")).name == "n"
    _err(Cfg, _cfg(name=5), r"key 'name' expects str, got 5 \(int\)")


def test_literal_rule() -> None:
    assert from_dict(Cfg, _cfg(mode="qpo")).mode == "qpo"
    _err(Cfg, _cfg(mode="sft"), r"key 'mode' expects one of 'qft', 'qpo', got 'sft' \(str\)")


def test_literal_does_not_confuse_bool_and_int() -> None:
    @dataclass
    class L:
        x: Literal[1, 2] = 1

    assert from_dict(L, {"x": 2}).x == 2
    with pytest.raises(ConfigError, match=r"key 'x' expects one of 1, 2, got True \(bool\)"):
        from_dict(L, {"x": True})


def test_optional_rule() -> None:
    assert from_dict(Cfg, _cfg(seed=None)).seed is None
    assert from_dict(Cfg, _cfg(seed=7)).seed == 7
    assert from_dict(Cfg, _cfg(warmup=1)).warmup == 1.0
    assert from_dict(Cfg, _cfg(sampling={"temperature": 0})).sampling == Sampling(temperature=0.0)
    assert from_dict(Cfg, _cfg(sampling=None)).sampling is None
    _err(Cfg, _cfg(seed="x"), r"key 'seed' expects int \| None, got 'x' \(str\)")
    _err(Cfg, _cfg(sampling=3), r"key 'sampling' expects Sampling \| None, got 3 \(int\)")
    _err(Cfg, _cfg(warmup="x"), r"key 'warmup' expects float \| None, got 'x' \(str\)")


def test_error_inside_optional_dataclass_keeps_its_key() -> None:
    _err(Cfg, _cfg(sampling={"temprature": 1.0}),
         r"unknown key 'sampling\.temprature' \(did you mean 'sampling\.temperature'\?\)")


def test_multi_type_union() -> None:
    @dataclass
    class U:
        x: int | str | None = None
        y: list[Sampling] | str = "all"

    assert from_dict(U, {"x": 3}).x == 3 and from_dict(U, {"x": "a"}).x == "a"
    assert from_dict(U, {"y": [{"temperature": 2}]}).y == [Sampling(temperature=2.0)]
    with pytest.raises(ConfigError, match=r"key 'x' expects int \| str \| None, got 1\.5 \(float\)"):
        from_dict(U, {"x": 1.5})
    with pytest.raises(ConfigError, match=r"key 'y' expects list\[Sampling\] \| str, got 4 \(int\)"):
        from_dict(U, {"y": 4})
    # The value matched the list option's shape; the deep error is the one worth showing.
    with pytest.raises(ConfigError, match=r"unknown key 'y\[0\]\.temprature' \(did you mean 'y\[0\]\.temperature"):
        from_dict(U, {"y": [{"temprature": 2}]})


def test_list_rule() -> None:
    assert from_dict(Sampling, {"stop": ["a", "b"]}).stop == ["a", "b"]
    _err(Sampling, {"stop": "a"}, r"key 'stop' expects list\[str\], got 'a' \(str\)")
    _err(Sampling, {"stop": ["a", 3]}, r"key 'stop\[1\]' expects str, got 3 \(int\)")


def test_list_of_dataclasses() -> None:
    cfg = from_dict(Cfg, _cfg(stages=[{"batch_size": 1}, {"batch_size": 2, "lr": 1}]))
    assert cfg.stages == [Train(1), Train(2, lr=1.0)]
    _err(Cfg, _cfg(stages=[{"batch_size": 1}, {"batch_sz": 2}]),
         r"unknown key 'stages\[1\]\.batch_sz' \(did you mean 'stages\[1\]\.batch_size'\?\)")


def test_tuple_rules() -> None:
    cfg = from_dict(Cfg, _cfg(shape=[7, 8, 9], layers=[1, 2, 3, 4]))
    assert cfg.shape == (7, 8, 9) and cfg.layers == (1, 2, 3, 4)
    assert from_dict(Cfg, _cfg(layers=[])).layers == ()
    _err(Cfg, _cfg(shape=[1, 2]), r"key 'shape' expects tuple\[int, int, int\] \(3 items\), got \[1, 2\] \(list\)")
    _err(Cfg, _cfg(shape=[1, 2, "z"]), r"key 'shape\[2\]' expects int, got 'z' \(str\)")
    _err(Cfg, _cfg(layers=[1, 2.5]), r"key 'layers\[1\]' expects int, got 2\.5 \(float\)")
    _err(Cfg, _cfg(layers=5), r"key 'layers' expects tuple\[int, \.\.\.\], got 5 \(int\)")


def test_dict_rule() -> None:
    assert from_dict(Cfg, _cfg(weights={"a": 1, "b": 0.5})).weights == {"a": 1.0, "b": 0.5}
    _err(Cfg, _cfg(weights={"a": "heavy"}), r"key 'weights\.a' expects float, got 'heavy' \(str\)")
    _err(Cfg, _cfg(weights=[1]), r"key 'weights' expects dict\[str, float\], got \[1\] \(list\)")
    _err(Cfg, _cfg(weights={1: 1.0}), r"key 'weights \(key 1\)' expects str, got 1 \(int\)")


def test_any_and_path_rules() -> None:
    assert from_dict(Cfg, _cfg(extra={"x": [1]})).extra == {"x": [1]}
    assert from_dict(Cfg, _cfg(out="a/b")).out == Path("a/b")
    _err(Cfg, _cfg(out=3), r"key 'out' expects Path, got 3 \(int\)")


def test_nested_dataclass_wrong_shape() -> None:
    _err(Cfg, {"train": 5}, r"key 'train' expects a mapping for Train, got 5 \(int\)")
    with pytest.raises(ConfigError, match=r"configs/x\.yaml: .*expects a mapping, got \[1\]"):
        from_dict(Cfg, [1], where="configs/x.yaml")  # type: ignore[arg-type]


def test_unknown_key_suggests_and_lists_valid_keys() -> None:
    msg = (r"^configs/x\.yaml: unknown key 'train\.lrr' \(did you mean 'train\.lr'\?\); "
           r"valid keys under 'train': batch_size, lr, optim, steps$")
    _err(Cfg, _cfg(train={"batch_size": 1, "lrr": 0.1}), msg)
    _err(Cfg, _cfg(train={"batch_size": 1, "optim": {"betaz": [1, 2]}}),
         r"unknown key 'train\.optim\.betaz' \(did you mean 'train\.optim\.betas'\?\); valid keys under 'train\.optim'")
    _err(Cfg, _cfg(zzzz=1), r"unknown key 'zzzz'; valid keys at top level: extra, flag, ")


def test_missing_required_key() -> None:
    _err(Cfg, {}, r"^configs/x\.yaml: missing required key 'train'$")
    _err(Cfg, {"train": {}}, r"^configs/x\.yaml: missing required key 'train\.batch_size'$")


def test_init_false_fields_are_neither_required_nor_accepted() -> None:
    @dataclass
    class D:
        a: int = 1
        derived: int = field(init=False, default=0)

    assert to_dict(D(a=2)) == {"a": 2}
    with pytest.raises(ConfigError, match=r"unknown key 'derived'"):
        from_dict(D, {"derived": 5})


def test_post_init_value_error_becomes_config_error_with_key_path() -> None:
    _err(Cfg, _cfg(train={"batch_size": 0}),
         r"^configs/x\.yaml: invalid 'train': batch_size must be positive, got 0$")
    _err(Train, {"batch_size": -1}, r"^configs/x\.yaml: batch_size must be positive, got -1$")
    _err(Cfg, _cfg(stages=[{"batch_size": 1}, {"batch_size": 0}]), r"invalid 'stages\[1\]': batch_size must be")


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------------------------- overrides

@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("train.lr=3e-4", ["train", "lr"], 3e-4),
        ("train.lr=1e5", ["train", "lr"], 1e5),
        ("a.b=", ["a", "b"], ""),
        ("a=[1,2]", ["a"], [1, 2]),
        ("a=[x, y]", ["a"], ["x", "y"]),
        ("flag=true", ["flag"], True),
        ("flag=False", ["flag"], False),
        ("flag=yes", ["flag"], "yes"),  # only true/false are booleans
        ("seed=null", ["seed"], None),
        ("seed=~", ["seed"], None),
        ("n=7", ["n"], 7),
        ("name=hello world", ["name"], "hello world"),
        ("expr=a=b=c", ["expr"], "a=b=c"),
        ("name='42'", ["name"], "42"),
        ("d={x: 1}", ["d"], {"x": 1}),
        (" a.b = 2", ["a", "b"], 2),
        ("date=2024-01-02", ["date"], "2024-01-02"),
    ],
)
def test_parse_override(text: str, path: list[str], value: Any) -> None:
    got_path, got = parse_override(text)
    assert got_path == path
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["train.lr", "=3", "a..b=1", ".a=1", "a.=1"])
def test_parse_override_bad_key(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        parse_override(text)


def test_parse_override_bad_yaml_value() -> None:
    with pytest.raises(ConfigError, match=r"override 'a=\[1,'.*invalid YAML"):
        parse_override("a=[1,")


def test_apply_overrides_nested_and_creating() -> None:
    data = {"train": {"lr": 0.1, "optim": {"lr": 1}}, "name": "x", "sampling": None}
    out = apply_overrides(data, ["train.optim.lr=2", "new.sub.key=[1,2]", "name=y", "sampling.temperature=0.5",
                                 "train.lr=0.2", "train.lr=0.3"])
    assert out == {"train": {"lr": 0.3, "optim": {"lr": 2}}, "name": "y", "new": {"sub": {"key": [1, 2]}},
                   "sampling": {"temperature": 0.5}}
    assert data == {"train": {"lr": 0.1, "optim": {"lr": 1}}, "name": "x", "sampling": None}  # input untouched


def test_apply_overrides_through_scalar_is_error() -> None:
    with pytest.raises(ConfigError, match=r"override 'name\.x=1': key 'name' is not a mapping"):
        apply_overrides({"name": "x"}, ["name.x=1"])


# ------------------------------------------------------------------------------------------- YAML loading

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.yaml", "train:\n  batch_size: 2\n  lr: 3e-4\nmode: qpo\nshape: [1, 1, 1]\n")
    cfg = load_config(Cfg, p, ["train.steps=9", "sampling.stop=['</s>']", "flag=true"])
    assert cfg.train == Train(batch_size=2, lr=3e-4, steps=9)
    assert cfg.mode == "qpo" and cfg.shape == (1, 1, 1) and cfg.flag is True
    assert cfg.sampling == Sampling(stop=["</s>"])


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "configs" / "qft" / "tiny.yaml", "train:\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: unknown key 'train\.lrr' \(did you mean"):
        load_config(Cfg, p, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: key 'train\.lr' expects float, got 'abc'"):
        load_config(Cfg, p, ["train.lr=abc"])


def test_load_config_without_file() -> None:
    assert load_config(Cfg, None, ["train.batch_size=3"]) == Cfg(train=Train(3))
    with pytest.raises(ConfigError, match=r"missing required key 'train'"):
        load_config(Cfg, None)


def test_yaml_1_2_scalars(tmp_path: Path) -> None:
    p = _write(tmp_path / "s.yaml", "a: 3e-4\nb: 1E5\nc: no\nd: on\ne: true\nf: 2024-01-02\ng: 1.5\nh: 10\n")
    assert load_yaml(p) == {"a": 3e-4, "b": 1e5, "c": "no", "d": "on", "e": True, "f": "2024-01-02",
                            "g": 1.5, "h": 10}


def test_empty_yaml_is_empty_mapping(tmp_path: Path) -> None:
    assert load_yaml(_write(tmp_path / "e.yaml", "# nothing\n")) == {}


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.yaml", "train:\n  lr: 1\n  steps: [1, 2\nname: x\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: invalid YAML at line \d+") as e:
        load_yaml(p)
    p2 = _write(tmp_path / "bad2.yaml", "a: 1\nb: 2\n  c: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p2))}: invalid YAML at line 3, column"):
        load_yaml(p2)
    assert "line" in str(e.value)


def test_duplicate_key_is_error(tmp_path: Path) -> None:
    p = _write(tmp_path / "dup.yaml", "train:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: invalid YAML at line 3.*duplicate key 'lr'"):
        load_yaml(p)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "3\n"])
def test_non_mapping_top_level(tmp_path: Path, text: str) -> None:
    p = _write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: top level must be a mapping"):
        load_yaml(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_yaml(tmp_path / "nope.yaml")


def test_base_deep_merge_and_chain(tmp_path: Path) -> None:
    _write(tmp_path / "root.yaml", "train:\n  batch_size: 1\n  lr: 0.1\n  optim: {lr: 5, betas: [0.1, 0.2]}\n"
                                   "name: root\nweights: {a: 1}\n")
    _write(tmp_path / "mid" / "mid.yaml", "base: ../root.yaml\ntrain:\n  lr: 0.2\n  optim: {lr: 6}\nmode: qpo\n")
    leaf = _write(tmp_path / "mid" / "leaf" / "leaf.yaml",
                  "base: ../mid.yaml\ntrain:\n  steps: 3\nweights: {b: 2}\nname: leaf\n")
    assert load_yaml(leaf) == {
        "train": {"batch_size": 1, "lr": 0.2, "optim": {"lr": 6, "betas": [0.1, 0.2]}, "steps": 3},
        "name": "leaf", "mode": "qpo", "weights": {"a": 1, "b": 2},
    }
    cfg = load_config(Cfg, leaf, ["train.optim.lr=7"])
    assert cfg.train == Train(batch_size=1, lr=0.2, steps=3, optim=Optim(lr=7.0, betas=(0.1, 0.2)))


def test_base_child_scalar_replaces_base_mapping(tmp_path: Path) -> None:
    _write(tmp_path / "b.yaml", "sampling: {temperature: 0.5}\nx: [1, 2]\n")
    child = _write(tmp_path / "c.yaml", "base: b.yaml\nsampling: null\nx: [3]\n")
    assert load_yaml(child) == {"sampling": None, "x": [3]}


def test_base_cycle_detected(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: b.yaml\nx: 1\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\ny: 1\n")
    with pytest.raises(ConfigError, match=r"'base' cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_yaml(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match=r"'base' cycle"):
        load_yaml(tmp_path / "self.yaml")


def test_base_errors_name_the_including_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.yaml", "base: missing.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: key 'base': file not found"):
        load_yaml(p)
    p2 = _write(tmp_path / "c2.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p2))}: key 'base' expects a file path"):
        load_yaml(p2)
    _write(tmp_path / "broken.yaml", "a: [\n")
    p3 = _write(tmp_path / "c3.yaml", "base: broken.yaml\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML at line"):
        load_yaml(p3)


# ------------------------------------------------------------------------------------------------- hashing

def test_config_hash_stable_and_sensitive() -> None:
    a = Cfg(train=Train(4), weights={"x": 1.0, "y": 2.0})
    b = Cfg(train=Train(4), weights={"y": 2.0, "x": 1.0})
    h = config_hash(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == config_hash(b) == config_hash(from_dict(Cfg, to_dict(a)))
    assert config_hash({"b": 1, "a": {"d": 2, "c": 3}}) == config_hash({"a": {"c": 3, "d": 2}, "b": 1})
    assert h != config_hash(dataclasses.replace(a, train=Train(4, lr=3.1e-4)))
    assert h != config_hash(dataclasses.replace(a, weights={"x": 1.0, "y": 2.5}))
    assert h != config_hash(dataclasses.replace(a, name="other"))
