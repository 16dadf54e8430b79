"""Every notebook runs top to bottom at a small size (WAVEFIELD_NOTEBOOK_QUICK=1) in a real Jupyter kernel."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, monkeypatch) -> str:
  """Runs notebooks/<name> and returns the text of every output."""
  monkeypatch.setenv("WAVEFIELD_NOTEBOOK_QUICK", "1")
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(
    notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
  ).execute()
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
  return "\n".join(texts)


def numbers_after(label: str, text: str) -> list[float]:
  return [float(v) for v in re.findall(re.escape(label) + r"\s*([-+0-9.e]+)", text)]


def test_all_notebooks_are_tested():
  assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


def test_wave_physics(monkeypatch):
  text = execute("01_wave_physics.ipynb", monkeypatch)
  errors = numbers_after("relative error against the field:", text)
  assert len(errors) == 4 and max(errors) < 1e-4
  causal, leaky = numbers_after("largest gradient from the future / largest gradient:", text)
  assert causal < 1e-6 and leaky > 1e-3


def test_train_and_inspect(monkeypatch):
  text = execute("02_train_and_inspect.ipynb", monkeypatch)
  assert "bits per byte after 20 steps" in text
  (future,) = numbers_after("largest flow from the future / largest flow:", text)
  assert future < 1e-6
  assert "most sensitive: layer" in text


def test_long_context(monkeypatch):
  text = execute("03_long_context.ipynb", monkeypatch)
  (ratio,) = numbers_after("the wave model decodes", text)
  assert ratio > 1


NAMES = ["01_wave_physics.ipynb", "02_train_and_inspect.ipynb", "03_long_context.ipynb"]
# Executes whole notebooks, one of them training: left out of `make test-fast`.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
