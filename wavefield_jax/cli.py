"""What the commands share: the workdir and step flags, and a run that ends an expected error in one line.

Flags are defined only when a command's `main` runs, never when a module is imported, so any of the
command modules can be imported together.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable

from absl import app, flags, logging

from wavefield_jax.config import base_config, config_file
from wavefield_jax.errors import CheckpointError, DataError

# --help lists the command's own flags; absl's, orbax's and grain's are accepted but not listed.
HELP = ("--help", "-h", "--helpshort", "-?")


def define_workdir_flags(step_use: str) -> None:
  """--workdir (required) and --step, for commands that read a trained run."""
  flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).", required=True)
  flags.DEFINE_integer("step", None, f"Checkpoint step to {step_use} (default: the latest).")


def config_keys() -> list[str]:
  """Every key of a run config with its default, "model.dim = 128", from `config.base_config`."""

  def walk(node, prefix: str):
    for key in sorted(node.keys()):
      value = node[key]
      if hasattr(value, "keys"):
        yield from walk(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key} = {value!r}"

  return list(walk(base_config(), ""))


def command_help(doc: str, with_config: bool) -> str:
  """The command's docstring, its flags with their defaults, and (for training) every config key."""
  lines = [doc.strip(), "", "flags:"]
  for name in sorted(flags.FLAGS):
    flag = flags.FLAGS[name]
    module = flags.FLAGS.find_module_defining_flag(name) or ""
    if name != flag.name or not ("wavefield_jax" in module or module in ("__main__", sys.argv[0])):
      continue
    default = flag.config_filename if name == "config" else flag.default
    shown = "" if default is None else f" (default: {default!r})"
    lines.append(f"  --{name}: {flag.help}{shown}")
  if with_config:
    lines += ["", "config keys, each settable as --config.KEY=VALUE (defaults of wavefield_jax.config.base_config;"]
    lines += ["the config file given may change them):", *(f"  {key}" for key in config_keys())]
  return "\n".join(lines)


def unknown_flag(argv: list[str]) -> str | None:
  """One line for the first --flag that this command does not define (config keys are checked later)."""
  for arg in argv[1:]:
    if not arg.startswith("--") or arg.startswith("--config.") or arg == "--":
      continue
    name = arg[2:].split("=", 1)[0]
    if name in flags.FLAGS or (name.startswith("no") and name[2:] in flags.FLAGS):
      continue
    near = difflib.get_close_matches(name, list(flags.FLAGS), n=1)
    return f"error: unknown flag --{name}" + (f"; did you mean --{near[0]}?" if near else "; see --help")
  return None


def with_shipped_configs(argv: list[str]) -> list[str]:
  """argv with each --config value resolved by `config.config_file` (the shipped configs outside a checkout)."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_file(arg.removeprefix("--config="))
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_file(out[i + 1])
  return out


def unknown_config_key(error: AttributeError, argv: list[str]) -> str:
  """One line for ml_collections' "'step'\nDid you mean "steps" instead of "step"?", with the whole key."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  missing = re.search(r"'(\w+)'", text)
  near = re.search(r'Did you mean "(\w+)"', text)
  name = missing.group(1) if missing else text.strip("'\" ")
  given = next((a for a in argv if a.startswith("--config.") and re.search(rf"[.]{name}(=|$)", a.split("=")[0])), None)
  key = given.split("=", 1)[0].removeprefix("--config.") if given else name
  hint = f"; did you mean {key.rsplit('.', 1)[0]}.{near.group(1)}?" if near and "." in key else ""
  return f"error: unknown config key {key}{hint}"


def define_config_flag(default: str) -> None:
  """--config (a config file, path[:argument]) and its --config.KEY=VALUE overrides. ml_collections reads
  the overrides from sys.argv here, when the flag is defined: a key the config lacks exits in one line."""
  from ml_collections import config_flags

  sys.argv = with_shipped_configs(sys.argv)
  try:
    config_flags.DEFINE_config_file("config", config_file(default), "A config file, path[:argument].", lock_config=True)
  except AttributeError as error:
    print(unknown_config_key(error, sys.argv), file=sys.stderr)
    sys.exit(2)


def run(
  body: Callable[[flags.FlagValues], None],
  errors: tuple[type[Exception], ...] = (),
  doc: str = "",
  with_config: bool = False,
) -> None:
  """Parses the command line and calls body(FLAGS) with warnings-only logging (orbax logs every save at
  INFO); a bad checkpoint, corpus or value, or one of `errors`, exits with `error: <message>` and status 2.

  --help prints `doc`, the flags and (with_config) every config key; an unknown flag or config key exits
  with status 2 and one line naming it and the nearest valid name."""
  argv = with_shipped_configs(sys.argv)
  if any(arg in HELP for arg in argv[1:]):
    print(command_help(doc, with_config))
    sys.exit(0)
  problem = unknown_flag(argv)
  if problem:
    print(problem, file=sys.stderr)
    sys.exit(2)

  def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
      body(flags.FLAGS)
    except (CheckpointError, DataError, ValueError, *errors) as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)

  try:
    app.run(main, argv=argv)
  except AttributeError as error:  # ml_collections: a --config.KEY that the config does not have
    print(unknown_config_key(error, argv), file=sys.stderr)
    sys.exit(2)
