"""lm-evaluation-harness for trained runs: the model registered as "wavefield", offline task files, and the
`wavefield-harness` command.

Importing this module registers the model, so lm-eval can build it by name:

  lm_eval --model wavefield --model_args workdir=runs/default,batch_size=8 --tasks lambada_openai

Scoring is `scoring.Scorer`'s: requests padded into a few lengths, one row each; `loglikelihood_rolling` of a
wave-family model reads the whole document with its state carried, and a model with attention reads
lm-eval-style rolling windows of its training length. `generate_until` is greedy, through `generate`.

  wavefield-harness --workdir DIR --tasks T1,T2 [--include-path DIR] [--limit N] [--output FILE]
                    [--wikitext103 wiki.test.raw] [--lambada lambada_test.jsonl]

--wikitext103 and --lambada point lm-eval's own `wikitext` and `lambada_openai` tasks at local files (the raw
WikiText-103 test file; LAMBADA as `lambada_openai`'s JSONL of {"text": ...} lines), as the tasks
`wikitext103_local` and `lambada_local`; nothing is downloaded. Other task names are lm-eval's, which need
its hub, or your own YAML files under --include-path.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tempfile
from pathlib import Path

import lm_eval
import numpy as np
import yaml
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from wavefield_jax.errors import CheckpointError, DataError

LOCAL_TASKS = {
  "wikitext103_local": ("wikitext", "wikitext.yaml"),
  "lambada_local": ("lambada", "lambada_openai.yaml"),
}
# A WikiText article starts at a title line " = Title = " (sections are " = = Section = = ").
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


@register_model("wavefield")
class WavefieldLM(LM):
  """A trained wavefield-jax run as an lm-eval model.

  Args:
    workdir: the training workdir.
    step: the checkpoint's step; the latest when None.
    batch_size: rows per compiled call.
  """

  def __init__(self, workdir: str, step: int | str | None = None, batch_size: int | str = 8, **unused):
    super().__init__()
    from wavefield_jax.checkpointing import load_trained
    from wavefield_jax.scoring import Scorer

    graphdef, params, config, self.step = load_trained(workdir, None if step in (None, "") else int(step))
    self.scorer = Scorer(graphdef, params, config, int(batch_size))
    self.tokenizer = self.scorer.tokenizer

  def _split(self, context: str, continuation: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of the context and of the continuation, the whole encoded at once so a BPE merge across the
    boundary counts as the model would read it; the context's trailing spaces move to the continuation."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = self.tokenizer.encode(context + continuation)
    head = len(self.tokenizer.encode(context)) if context else 0
    return whole[:head], whole[head:]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = []
    for request in requests:
      context, continuation = request.args
      tokens = self._split(context, continuation)
      if len(tokens[1]) == 0:
        raise DataError(f"the continuation {continuation!r} of context {context[-40:]!r} tokenizes to nothing")
      pairs.append(tokens)
    return self.scorer.continuations(pairs)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    return [self.scorer.document(self.tokenizer.encode(request.args[0])) for request in requests]

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    results: list[str | None] = [None] * len(requests)
    by_budget: dict[int, list[int]] = {}  # one compiled loop per number of new tokens
    settings = []
    for index, request in enumerate(requests):
      context, kwargs = request.args
      until = kwargs.get("until", [])
      until = [until] if isinstance(until, str) else list(until)
      budget = int(kwargs.get("max_gen_toks", 256))
      settings.append((self.tokenizer.encode(context), until))
      by_budget.setdefault(budget, []).append(index)
    for budget, indices in by_budget.items():
      texts = self.scorer.generate_until([settings[i][0] for i in indices], [settings[i][1] for i in indices], budget)
      for index, text in zip(indices, texts, strict=True):
        results[index] = text
    return results


def wikitext_pages(raw: str) -> list[str]:
  """The articles of a raw WikiText file (wiki.test.raw), each from its title line to the next title."""
  pages: list[list[str]] = []
  for line in raw.splitlines(keepends=True):
    if WIKITEXT_TITLE.match(line.rstrip("\n")) or not pages:
      pages.append([])
    pages[-1].append(line)
  return ["".join(page) for page in pages if "".join(page).strip()]


def write_local_tasks(directory: Path, wikitext103: str | None, lambada: str | None) -> list[str]:
  """Task YAMLs in `directory` that run lm-eval's own wikitext and lambada_openai tasks over local files.

  Returns:
    the names of the tasks written.
  """
  lm_eval_tasks = Path(lm_eval.__file__).parent / "tasks"
  written = []
  for name, path in (("wikitext103_local", wikitext103), ("lambada_local", lambada)):
    if path is None:
      continue
    source = Path(path).expanduser()
    try:
      text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
      raise DataError(f"cannot read {source} as UTF-8 text: {error}") from error
    if not text.strip():
      raise DataError(f"{source} is empty")
    if name == "wikitext103_local":  # lm-eval's wikitext reads documents {"page": ...}
      data = directory / "wikitext103_pages.jsonl"
      data.write_text("".join(json.dumps({"page": page}) + "\n" for page in wikitext_pages(text)))
    else:
      for number, line in enumerate(text.splitlines(), 1):
        try:
          assert isinstance(json.loads(line)["text"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
          raise DataError(f"{source}:{number}: not a JSON object with a string 'text'") from None
      data = source.resolve()
    folder, file = LOCAL_TASKS[name]
    task = {
      "include": str(lm_eval_tasks / folder / file),
      "task": name,
      "tag": [],
      "dataset_path": "json",
      "dataset_name": None,
      "dataset_kwargs": {"data_files": {"test": str(data)}},
      "training_split": None,
      "validation_split": None,
      "test_split": "test",
    }
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(task))
    written.append(name)
  return written


def run_harness(
  workdir: str,
  tasks: list[str],
  *,
  include_path: str | None = None,
  limit: int | None = None,
  batch_size: int = 8,
  step: int | None = None,
  wikitext103: str | None = None,
  lambada: str | None = None,
  bootstrap_iters: int = 0,
) -> dict:
  """lm_eval.simple_evaluate with the run's model over `tasks`; returns lm-eval's results dict.

  bootstrap_iters: lm-eval's bootstrap of standard errors (0: none). It forks worker processes, which JAX's
  threads make unsafe, so it is off unless asked for."""
  from lm_eval.tasks import TaskManager

  with tempfile.TemporaryDirectory() as local:
    write_local_tasks(Path(local), wikitext103, lambada)
    paths = [local] + ([str(Path(include_path).expanduser())] if include_path else [])
    manager = TaskManager(include_path=paths)
    known = set(manager.all_tasks)
    for task in tasks:
      if task not in known:
        near = difflib.get_close_matches(task, sorted(known), n=5, cutoff=0.5)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        local_hint = " (wikitext103_local and lambada_local need --wikitext103 / --lambada)"
        raise DataError(f"lm-eval knows no task {task!r}{hint}{local_hint if task in LOCAL_TASKS else ''}")
    model = WavefieldLM(workdir, step=step, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
      model=model,
      tasks=tasks,
      task_manager=manager,
      limit=limit,
      log_samples=False,
      bootstrap_iters=bootstrap_iters,
    )
  return results


def main() -> None:
  """The `wavefield-harness` command."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a training workdir")
  parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
  parser.add_argument("--include-path", help="a folder of your own task YAML files")
  parser.add_argument("--limit", type=int, help="at most this many documents per task")
  parser.add_argument("--output", help="write lm-eval's results JSON here")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
  parser.add_argument("--wikitext103", help="the raw WikiText-103 test file, for the task wikitext103_local")
  parser.add_argument("--lambada", help="LAMBADA as lambada_openai's JSONL, for the task lambada_local")
  parser.add_argument("--bootstrap-iters", type=int, default=0, help="lm-eval's bootstrap of standard errors")
  args = parser.parse_args()
  try:
    results = run_harness(
      args.workdir,
      [t for t in args.tasks.split(",") if t],
      include_path=args.include_path,
      limit=args.limit,
      batch_size=args.batch_size,
      step=args.step,
      wikitext103=args.wikitext103,
      lambada=args.lambada,
      bootstrap_iters=args.bootstrap_iters,
    )
  except (CheckpointError, DataError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  for task, metrics in results["results"].items():
    shown = ", ".join(
      f"{k.removesuffix(',none')} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k
    )
    print(f"{task}: {shown}")
  if args.output:
    Path(args.output).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
  main()
