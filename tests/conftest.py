"""Test setup: CPU JAX with 8 fake devices so every test exercises sharding, float32 matmuls, shared fixtures."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The content-hash cache of a test run stays with the run (subprocesses inherit it), not in ~/.cache/sq-jax.
os.environ.setdefault("SQ_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="sq-jax-test-cache-"))

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(os.environ.get("SQ_JAX_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only benchmark copies beside the checkout (`../shared/data`)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set SQ_JAX_SHARED_DATA")
    return SHARED_DATA
