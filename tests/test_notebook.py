"""notebooks/quickstart.ipynb runs top to bottom (on an untrained demo-preset checkpoint)."""

from __future__ import annotations

import os

import pytest
from conftest import REPO_ROOT


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MOLMO_DEMO_OUT", str(tmp_path / "demo_out"))  # no trained demo: build one
    monkeypatch.setenv("MOLMO_CHECKPOINT", str(tmp_path / "no_such_checkpoint"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    nb = nbformat.read(REPO_ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}
    )
    client.execute()
    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "using an untrained one" in text
    assert "A:" in text and "points (pixels):" in text
    images = [
        out for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})
    ]
    assert len(images) == 1  # the drawn points
    assert "not found: set MOLMO_CHECKPOINT" in text
    assert (tmp_path / "demo_out" / "untrained" / "preprocessor_config.json").exists()
    assert os.environ["MOLMO_DEMO_OUT"] == str(tmp_path / "demo_out")
