"""The Python blocks of the README and the docs run as written (those that load `runs/default` against a
tiny trained run). Each block carries a marker just above it: `<!-- snippet: NAME -->` to run it, or
`<!-- not run: why -->`; a block without one fails, so no example goes untested by accident."""

import re
from pathlib import Path

import helpers
import pytest

from wavefield_jax.train_lib import train_and_evaluate

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (snippet|not run): ?([^>]*?) -->\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str | None, str, str]]:
  """(page, marker kind or None, marker text, code) of every Python block."""
  found = []
  for page in PAGES:
    for kind, text, code in BLOCK.findall(page.read_text()):
      found.append((str(page.relative_to(REPO)), kind or None, text, code))
  return found


SNIPPETS = {text: code for _, kind, text, code in blocks() if kind == "snippet"}
TRAINED = sorted(name for name, code in SNIPPETS.items() if '"runs/default"' in code)
PLAIN = sorted(name for name in SNIPPETS if name not in TRAINED)


def run(name: str, workdir: Path | None = None) -> None:
  code = SNIPPETS[name] if workdir is None else SNIPPETS[name].replace('"runs/default"', repr(str(workdir)))
  exec(compile(code, f"snippet {name}", "exec"), {})


def test_every_python_block_is_marked_and_the_named_ones_are_there():
  unmarked = [page for page, kind, _, _ in blocks() if kind is None]
  assert not unmarked, f"Python blocks without a snippet / not run marker in {unmarked}"
  names = [text for _, kind, text, _ in blocks() if kind == "snippet"]
  assert len(names) == len(set(names)), f"snippet names repeat: {names}"
  assert {"library", "functions", "model", "own_model", "linen"} <= set(PLAIN)
  assert {"trained_run", "analysis"} <= set(TRAINED)


@pytest.mark.slow
@pytest.mark.parametrize("name", PLAIN)
def test_snippet_runs_as_written(name):
  run(name)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("snippets") / "run"
  train_and_evaluate(helpers.tiny_config(steps=3), workdir, corpus=helpers.tiny_corpus())
  return workdir


@pytest.mark.slow
def test_text_to_tokens_to_text_snippet_continues_the_prompt(trained_run, capsys):
  run("trained_run", trained_run)
  printed = capsys.readouterr().out
  assert printed.startswith("ROMEO:") and len(printed) > 100  # 200 sampled bytes after the prompt


@pytest.mark.slow
def test_analysis_snippet_prints_a_gradient_per_head(trained_run, capsys):
  run("analysis", trained_run)
  table = capsys.readouterr().out.strip().splitlines()
  assert len(table) == 2 + 4  # header, rule, the tiny model's one wave layer of 4 heads
