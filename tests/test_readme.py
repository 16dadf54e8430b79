"""The README's Python snippets run as written (the trained-run one against a freshly trained tiny workdir)."""

import re
from pathlib import Path

import helpers
import pytest

from wavefield_jax.train_lib import train_and_evaluate

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_its_three_snippets():
  assert len(SNIPPETS) == 3 and "runs/default" in SNIPPETS[2]


@pytest.mark.parametrize("index", [0, 1])
def test_library_snippets_run_as_written(index):
  exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})


@pytest.mark.slow
def test_trained_run_snippet_runs_and_prints_the_prompt_continued(tmp_path, capsys):
  workdir = tmp_path / "run"
  train_and_evaluate(helpers.tiny_config(steps=3), workdir, corpus=helpers.tiny_corpus())
  exec(compile(SNIPPETS[2].replace('"runs/default"', repr(str(workdir))), "README.md snippet 2", "exec"), {})
  printed = capsys.readouterr().out
  assert "ROMEO:" in printed and len(printed.split("ROMEO:", 1)[1]) >= 100  # 200 bytes, some decoded as one
