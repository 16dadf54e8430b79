"""The README's Python snippets run as written (those that load `runs/default`, against a tiny trained run)."""

import re
from pathlib import Path

import helpers
import pytest

from wavefield_jax.train_lib import train_and_evaluate

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
TRAINED = [i for i, snippet in enumerate(SNIPPETS) if '"runs/default"' in snippet]


def run(index: int, workdir: Path | None = None) -> None:
  code = SNIPPETS[index] if workdir is None else SNIPPETS[index].replace('"runs/default"', repr(str(workdir)))
  exec(compile(code, f"README.md python snippet {index}", "exec"), {})


def test_the_readme_has_library_and_trained_run_snippets():
  assert len(SNIPPETS) == 4 and TRAINED == [2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_library_snippets_run_as_written(index):
  run(index)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("readme") / "run"
  train_and_evaluate(helpers.tiny_config(steps=3), workdir, corpus=helpers.tiny_corpus())
  return workdir


@pytest.mark.slow
def test_text_to_tokens_to_text_snippet_continues_the_prompt(trained_run, capsys):
  run(2, trained_run)
  printed = capsys.readouterr().out
  assert printed.startswith("ROMEO:") and len(printed) > 100  # 200 sampled bytes after the prompt


@pytest.mark.slow
def test_analysis_snippet_prints_a_gradient_per_head(trained_run, capsys):
  run(3, trained_run)
  table = capsys.readouterr().out.strip().splitlines()
  assert len(table) == 2 + 4  # header, rule, the tiny model's one wave layer of 4 heads
