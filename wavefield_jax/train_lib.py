"""Training: the optimizer, one jitted train step, evaluation in bits per byte, and the loop.

The train state is a plain pytree {"params", "opt_state", "step", "rng"} (the model's parameters as
a pure dict), so that one function `train_step(state, batch) -> (state, metrics)` is jitted once with
donated state and orbax saves it as is.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from wavefield_jax import data as data_lib
from wavefield_jax import sharding
from wavefield_jax.checkpointing import Checkpointer, CheckpointError
from wavefield_jax.config import validate_config
from wavefield_jax.generate import generate
from wavefield_jax.layers import WaveParam
from wavefield_jax.model import WaveFieldLM, count_params

State = dict[str, Any]


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, unusable workdir); the last good checkpoint is kept."""


def build_model(config: ml_collections.ConfigDict, seed: int, mesh=None) -> tuple[nnx.GraphDef, dict, WaveFieldLM]:
  """The model, its graph definition, and its parameters as a pure dict (what the train state holds)."""
  model = WaveFieldLM(config.model, rngs=nnx.Rngs(seed), mesh=mesh)
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state), model


def param_labels(model: WaveFieldLM, params: dict) -> dict:
  """'wave' for the physical constants, 'no_decay' for norms and other vectors, 'decay' for matrices."""
  wave_paths = {
    tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, WaveParam))
  }

  def label(path, leaf):
    names = tuple(k.key for k in path)
    if names in wave_paths:
      return "wave"
    return "decay" if leaf.ndim >= 2 and names[-1] != "embedding" else "no_decay"

  return jax.tree_util.tree_map_with_path(label, params)


def init_state(
  config: ml_collections.ConfigDict, seed: int, mesh=None
) -> tuple[nnx.GraphDef, State, optax.GradientTransformation]:
  """A fresh train state {"params", "opt_state", "step", "rng"}, its graph definition and the optimizer.
  With a mesh, the model's wave layers run their convolution sharded over it (see `sharding`)."""
  graphdef, params, model = build_model(config, seed, mesh)
  optimizer = make_optimizer(config.train, param_labels(model, params))
  state = {
    "params": params,
    "opt_state": optimizer.init(params),
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(jax.random.key(seed + 1)),
  }
  return graphdef, state, optimizer


def make_optimizer(train: ml_collections.ConfigDict, labels: dict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, global-norm clipping, and three parameter groups."""

  def schedule(peak: float) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=min(train.warmup_steps, train.steps - 1),
      decay_steps=train.steps,
      end_value=peak * train.final_learning_rate_fraction,
    )

  groups = {
    "decay": optax.adamw(schedule(train.learning_rate), b2=0.95, weight_decay=train.weight_decay),
    "no_decay": optax.adamw(schedule(train.learning_rate), b2=0.95, weight_decay=0.0),
    "wave": optax.adamw(schedule(train.wave_learning_rate), b2=0.95, weight_decay=0.0),
  }
  return optax.chain(optax.clip_by_global_norm(train.grad_clip), optax.multi_transform(groups, labels))


def token_losses(graphdef: nnx.GraphDef, params: dict, batch: jax.Array) -> jax.Array:
  """Next-token cross entropy in nats, [B, L], for windows batch [B, L + 1]."""
  model = nnx.merge(graphdef, params)
  logits = model(batch[:, :-1])  # [B, L, V]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:])


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  skip_nonfinite: bool,
  shardings: tuple[Any, Any] | None = None,
) -> Callable:
  """The jitted step: (state, batch [B, L + 1], weights [B, L] or None) -> (state, metrics), state donated.

  The loss is the mean next-token cross entropy, or its weighted mean where weights are given (e.g. only
  the answers of a recall task). Metrics: "loss", "grad_norm", "finite". With shardings = (state
  shardings, batch sharding) the step is compiled for them (see `sharding`); pass weights by keyword.
  """

  def loss_fn(params, batch, weights):
    losses = token_losses(graphdef, params, batch)  # [B, L]
    if weights is None:
      return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

  def step(state: State, batch: jax.Array, weights: jax.Array | None = None) -> tuple[State, dict]:
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, weights)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if skip_nonfinite:  # keep the old parameters and moments when this batch went non-finite
      params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state["params"], state["opt_state"])
      )
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  state_sharding, batch_sharding = shardings
  return jax.jit(
    step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None), donate_argnums=0
  )


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """(params, windows [B, L + 1], weights [B, L], token_bytes [V]) -> (summed nats, summed bytes, tokens)."""

  @jax.jit
  def step(params, windows, weights, token_bytes):
    losses = token_losses(graphdef, params, windows)
    return (losses * weights).sum(), (token_bytes[windows[:, 1:]] * weights).sum(), weights.sum()

  return step


def evaluate(
  eval_step: Callable, params: dict, windows: np.ndarray, weights: np.ndarray, token_bytes: np.ndarray, batch_size: int
) -> dict:
  """Loss per token (nats) and bits per byte over all windows, batch by batch."""
  nats = bytes_ = tokens = 0.0
  for start in range(0, len(windows), batch_size):
    w, m = windows[start : start + batch_size], weights[start : start + batch_size]
    pad = batch_size - len(w)  # one compiled shape: pad the last batch with zero-weight windows
    w, m = np.pad(w, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))
    n, b, t = eval_step(params, w, m, token_bytes)
    nats, bytes_, tokens = nats + float(n), bytes_ + float(b), tokens + float(t)
  return {"loss": nats / tokens, "bpb": nats / math.log(2) / bytes_, "tokens": int(tokens), "bytes": int(bytes_)}


def config_record(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint depends on: the model, the tokenizer and the window length. How the wave
  convolution is computed is not part of it: every method gives the same model."""
  model = {k: v for k, v in config.model.to_dict().items() if k not in ("wave_method", "wave_chunk_size")}
  return {"model": model, "tokenizer": config.data.tokenizer, "seq_len": config.data.seq_len}


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat |= _flatten(value, f"{prefix}{key}.")
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def check_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Before any training: the workdir must be writable, and any checkpoints in it must be of this model."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_probe"
    probe.write_bytes(b"\0" * 1024 * 1024)  # a checkpoint needs room, not just permission
    probe.unlink()
  except OSError as error:
    raise TrainingError(f"workdir {workdir} is not usable: {error.strerror or error}") from error
  record_path = workdir / "config.json"
  record = json.loads(json.dumps(config_record(config)))
  if record_path.exists():
    saved, wanted = _flatten(json.loads(record_path.read_text())), _flatten(record)
    saved.pop("seed", None)  # kept for analysis (the initial model); a checkpoint does not depend on it
    diff = [
      f"{k}: checkpoint {saved.get(k)!r} vs config {wanted.get(k)!r}"
      for k in sorted(saved | wanted)
      if saved.get(k) != wanted.get(k)
    ]
    if diff:
      raise CheckpointError(
        f"workdir {workdir} holds checkpoints of a different config ({'; '.join(diff)}). "
        "Use another --workdir, or the config that wrote them; nothing was changed."
      )
  elif jax.process_index() == 0:
    record_path.write_text(json.dumps(record | {"seed": config.seed}, indent=1) + "\n")


def check_free_space(workdir: Path, state: State, keep: int) -> None:
  """Refuses to start when the workdir's disk cannot hold the checkpoints the run will write."""
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  need = (keep + 1) * size  # `keep` checkpoints plus the one being written
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise TrainingError(
      f"workdir {workdir} has {free / 2**20:,.1f} MiB free; {keep} checkpoints of this model plus one being "
      f"written need about {need / 2**20:,.1f} MiB. Free space, lower train.keep_checkpoints or use another --workdir."
    )


def load_trained(
  workdir: str | Path, step: int | None = None
) -> tuple[nnx.GraphDef, dict, ml_collections.ConfigDict, int]:
  """The model of a training workdir at its latest (or the given) checkpoint.

  Returns:
    graphdef, params, the config (base defaults with the workdir's model, tokenizer, seq_len and seed), step.
  """
  from wavefield_jax.config import base_config

  workdir = Path(workdir).expanduser().resolve()
  record_path = workdir / "config.json"
  if not record_path.exists():
    raise CheckpointError(f"{workdir} is not a training workdir: it has no config.json")
  record = json.loads(record_path.read_text())
  config = base_config()
  config.model.update(record["model"])
  config.model.mixers = tuple(record["model"]["mixers"])
  config.data.tokenizer, config.data.seq_len = record["tokenizer"], record["seq_len"]
  config.seed = record.get("seed", config.seed)
  checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{workdir / 'checkpoints'} holds no complete checkpoint")
  graphdef, like, _ = init_state(config, seed=0)  # the structure to restore into
  state, _ = checkpointer.restore(step, like)
  checkpointer.close()
  return graphdef, state["params"], config, step


def read_metrics(path: str | Path) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a killed process is skipped."""
  rows = []
  for line in Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def plot_losses(metrics_path: Path, out: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
  valid = [(r["step"], r["loss"]) for r in rows if r["kind"] == "eval"]
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot(*zip(*train, strict=True), label="train loss", alpha=0.8)
  if valid:
    ax.plot(*zip(*valid, strict=True), "o-", label="validation loss")
  ax.set_xlabel("step")
  ax.set_ylabel("nats per token")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def sample_text(graphdef, params, corpus: data_lib.Corpus, train: ml_collections.ConfigDict, rng: jax.Array) -> str:
  if train.sample_tokens == 0:
    return ""
  model = nnx.merge(graphdef, params)
  prompt = corpus.tokenizer.encode(train.sample_prompt)[None] if train.sample_prompt else np.asarray([[0]])
  tokens = generate(model, prompt, train.sample_tokens, temperature=train.sample_temperature, top_k=None, rng=rng)
  return corpus.tokenizer.decode(np.asarray(tokens[0]))


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, corpus: data_lib.Corpus | None = None
) -> dict:
  """Trains config in workdir, resuming from its latest checkpoint; returns the final metrics.

  Writes workdir/metrics.jsonl (one JSON line per log and evaluation), workdir/loss.png,
  workdir/samples.txt and orbax checkpoints under workdir/checkpoints.
  """
  validate_config(config)
  workdir = Path(workdir).expanduser().resolve()
  check_workdir(workdir, config)
  train = config.train
  if corpus is None:
    corpus = data_lib.load_corpus(config.data)
  if corpus.tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's {corpus.tokenizer.vocab_size}"
    )
  mesh = None
  if jax.device_count() > 1:  # data (and optionally sequence) parallel over every device
    mesh = sharding.make_mesh(seq=config.mesh.seq)
    local_data = mesh.shape[sharding.DATA] // jax.process_count()
    if train.batch_size % local_data:
      raise ValueError(
        f"train.batch_size={train.batch_size} must be divisible by the {local_data} data-parallel devices"
      )
  graphdef, state, optimizer = init_state(config, config.seed, mesh)
  check_free_space(workdir, state, train.keep_checkpoints)
  shardings = None
  if mesh is not None:
    state_sharding = sharding.state_shardings(mesh, state, fsdp=config.mesh.fsdp)
    state = jax.device_put(state, state_sharding)  # restored checkpoints take these shardings too
    shardings = (state_sharding, sharding.batch_sharding(mesh))
  dataset = data_lib.train_dataset(
    corpus.tokens["train"],
    config.data.seq_len,
    train.batch_size // jax.process_count(),  # train.batch_size is the global batch
    config.seed,
    jax.process_index(),
    jax.process_count(),
  )
  batches = iter(dataset)
  checkpointer = Checkpointer(workdir / "checkpoints", keep=train.keep_checkpoints)
  restored = checkpointer.restore_latest(state, fallback=train.restore_fallback)
  if restored is not None:
    _, state, data_state = restored
    batches.set_state(data_state)
  start = int(state["step"])

  train_step = make_train_step(graphdef, optimizer, train.on_nonfinite == "skip", shardings)

  def global_batch(local: np.ndarray) -> jax.Array:
    """This process's batch as (its part of) the global batch array."""
    if mesh is None:
      return jnp.asarray(local)
    return jax.make_array_from_process_local_data(shardings[1], local)

  eval_step = make_eval_step(graphdef)
  valid_windows, valid_weights = data_lib.eval_windows(
    corpus.tokens["validation"], config.data.seq_len, train.eval_windows or None
  )
  token_bytes = jnp.asarray(corpus.tokenizer.token_bytes)
  metrics_path = workdir / "metrics.jsonl"
  if jax.process_index() == 0 and metrics_path.exists() and not metrics_path.read_bytes().endswith(b"\n"):
    with metrics_path.open("a") as f:  # a kill cut the last line short: end it, so the next record stands alone
      f.write("\n")
  counts = count_params(nnx.merge(graphdef, state["params"]))
  mixers = tuple(config.model.mixers)
  print(f"model: {counts['total']:,} parameters ({counts['wave_constants']} physical constants); mixers {mixers}")
  if start:
    print(f"resuming from step {start} in {workdir}")

  lead = jax.process_index() == 0  # one process writes metrics, samples and plots

  def log(record: dict) -> None:
    if not lead:
      return
    with metrics_path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def run_eval(step: int, record: bool = True) -> dict:
    """Validation and a sample at `step`; `record=False` (a finished run started again) writes neither."""
    result = evaluate(eval_step, state["params"], valid_windows, valid_weights, token_bytes, train.batch_size)
    if record:
      log({"kind": "eval", "step": step} | result)
    text = ""
    if jax.process_count() == 1:  # sampling runs on one process's devices: left out of multi-process runs
      rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
      text = sample_text(graphdef, state["params"], corpus, train, rng)
    if lead and record:
      with (workdir / "samples.txt").open("a") as f:
        f.write(f"--- step {step}, validation {result['bpb']:.3f} bits per byte ---\n{text}\n\n")
    return result | {"sample": text}

  def save(step: int, force: bool = False) -> None:
    checkpointer.save(step, state, batches.get_state(), force=force)

  def flush() -> float:
    """Logs the steps since the last flush; stops (or records the skip) at a non-finite loss."""
    last = float("nan")
    for logged_step, m in jax.device_get(pending):
      if not m["finite"]:
        message = f"non-finite loss {m['loss']} at step {logged_step}"
        if train.on_nonfinite == "stop":
          raise TrainingError(f"{message}; stopped, the last good checkpoint is kept in {checkpointer.directory}")
        log({"kind": "skipped", "step": logged_step, "loss": float(m["loss"])})
      else:
        log({"kind": "train", "step": logged_step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])})
      last = float(m["loss"])
    pending.clear()
    return last

  # Ctrl-C: finish the step in flight, save, then stop.
  interrupted = []
  previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
  tokens_per_step = train.batch_size * config.data.seq_len
  pending: list[tuple[int, dict]] = []
  last_time, last_step = time.perf_counter(), start
  result = {}
  try:
    with tqdm(total=train.steps, initial=start, desc="train", unit="step", dynamic_ncols=True) as bar:
      for step in range(start, train.steps):
        state, metrics = train_step(state, global_batch(next(batches)))
        if pending:  # at most one step in flight: the bar moves as steps finish, not as they are queued
          jax.block_until_ready(pending[-1][1])
        pending.append((step + 1, metrics))
        done = step + 1
        if done % train.log_every == 0 or done == train.steps:
          loss = flush()
          now = time.perf_counter()
          rate = (done - last_step) * tokens_per_step / (now - last_time)
          last_time, last_step = now, done
          log({"kind": "speed", "step": done, "tokens_per_s": rate})
          bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        if done % train.eval_every == 0 and done != train.steps:
          flush()
          result = run_eval(done)
          bar.write(f"step {done}: validation loss {result['loss']:.4f}, {result['bpb']:.4f} bits per byte")
        stopping = bool(interrupted) or done == train.stop_at
        if done % train.checkpoint_every == 0 or done == train.steps or stopping:
          flush()  # never save parameters that a non-finite step produced
          save(done, force=stopping)
        if stopping:
          checkpointer.close()
          why = "interrupted" if interrupted else f"stopped at train.stop_at={train.stop_at}"
          print(f"{why}: saved step {done} in {checkpointer.directory}; rerun the same command to resume")
          return {"step": done, "interrupted": True}
    checkpointer.wait()
    final = int(state["step"])
    result = run_eval(final, record=final > start)  # a finished run started again adds no second record
    if lead:
      plot_losses(metrics_path, workdir / "loss.png")
  finally:
    signal.signal(signal.SIGINT, previous_handler)
    checkpointer.close()
  return result | {"step": final}
