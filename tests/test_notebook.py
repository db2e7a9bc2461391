"""The Colab demo notebook runs top to bottom headlessly (nbclient, its 'ci' preset: a few
steps of every stage on a smaller model, ~80 s on 2 cores) without a cell error, draws
every figure, and its PyTorch export agrees with JAX. The notebook is stored without
outputs."""
import re

import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "mergevq_demo.ipynb"


def test_notebook_is_stored_without_outputs():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)
  assert sum("figure" in c.metadata.get("tags", []) for c in code) >= 4


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("matplotlib")
  monkeypatch.setenv("MERGEVQ_DEMO_PRESET", "ci")
  monkeypatch.setenv("MERGEVQ_DEMO_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()   # raises CellExecutionError naming the cell on any error
  for i, cell in enumerate(nb.cells):
    if "figure" in cell.metadata.get("tags", []):
      assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"cell {i}: no figure"
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  diff = re.search(r"PyTorch vs JAX reconstruction at K=\d+: max abs diff (\S+)", text)
  assert diff and float(diff.group(1)) < 1e-4, text[-2000:]
  assert "pruned cache" in text and "| K | rFID |" in text
