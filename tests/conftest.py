"""Shared test fixtures: the golden folder and full-precision matmuls."""

from __future__ import annotations

import os
from pathlib import Path

# Eight simulated CPU devices so that sharded code paths run in-process (set before JAX starts).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = Path(__file__).resolve().parent.parent


def golden_root() -> Path:
    """The golden folder: $MOLMO_GOLDEN_DIR, else ../shared/golden next to the repository."""
    env = os.environ.get("MOLMO_GOLDEN_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "golden").resolve()


def require_golden(*parts: str) -> Path:
    """A path inside the golden folder; fails (never skips) when it is missing."""
    path = golden_root().joinpath(*parts)
    if not path.exists():
        pytest.fail(f"golden data missing: {path} (set MOLMO_GOLDEN_DIR to the golden folder)")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return require_golden()


def rel_err(ours, ref) -> float:
    """max|ours - ref| / max(1, max|ref|), the golden README's comparison."""
    import numpy as np

    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))
