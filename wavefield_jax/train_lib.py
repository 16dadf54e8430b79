"""Training: the optimizer, one jitted train step, evaluation in bits per byte, the run's setup and the loop.

The train state is a plain pytree {"params", "opt_state", "step", "rng"} (the model's parameters as
a pure dict), so that one function `train_step(state, batch) -> (state, metrics)` is jitted once with
donated state and orbax saves it as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from wavefield_jax import sharding
from wavefield_jax.checkpointing import Checkpointer
from wavefield_jax.config import validate_config
from wavefield_jax.generate import generate
from wavefield_jax.layers import WaveParam
from wavefield_jax.model import WaveFieldLM, count_params
from wavefield_jax.plots import plot_losses
from wavefield_jax.workdir import State, TrainingError, check_free_space, check_workdir

if TYPE_CHECKING:
  from wavefield_jax import input_pipeline


class MetricsLog:
  """The run's metrics.jsonl, written by one process (`lead`).

  A line a kill cut short is ended first, so the next record stands alone. Train-step metrics stay on
  the device until `flush` (fetching every step's loss would stall the pipeline); `add` waits only for
  the step before, so one step is in flight and a progress bar moves as steps finish. `flush` applies
  the non-finite policy: "stop" raises TrainingError, "skip" records the skipped step.
  """

  def __init__(self, path: Path, *, lead: bool, on_nonfinite: str, tokens_per_step: int, start: int, checkpoints: Path):
    self.path, self.lead, self.on_nonfinite, self.tokens_per_step = path, lead, on_nonfinite, tokens_per_step
    self.checkpoints = checkpoints  # named in the error that stops a run
    self.pending: list[tuple[int, dict]] = []
    self.last_time, self.last_step = time.perf_counter(), start
    if lead and path.exists() and not path.read_bytes().endswith(b"\n"):
      with path.open("a") as f:
        f.write("\n")

  def write(self, record: dict) -> None:
    if self.lead:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")

  def add(self, step: int, metrics: dict) -> None:
    """The metrics of the step that reached `step`, still on the device."""
    if self.pending:
      jax.block_until_ready(self.pending[-1][1])
    self.pending.append((step, metrics))

  def flush(self) -> float:
    """Writes the steps added since the last flush; returns the last loss (nan if none)."""
    last = float("nan")
    for step, m in jax.device_get(self.pending):
      if not m["finite"]:
        message = f"non-finite loss {m['loss']} at step {step}"
        if self.on_nonfinite == "stop":
          raise TrainingError(f"{message}; stopped, the last good checkpoint is kept in {self.checkpoints}")
        self.write({"kind": "skipped", "step": step, "loss": float(m["loss"])})
      else:
        self.write({"kind": "train", "step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"])})
      last = float(m["loss"])
    self.pending.clear()
    return last

  def log_progress(self, step: int) -> tuple[float, float]:
    """Flushes, then records the tokens per second since the last call; returns (last loss, that rate)."""
    loss = self.flush()
    now = time.perf_counter()
    rate = (step - self.last_step) * self.tokens_per_step / (now - self.last_time)
    self.last_time, self.last_step = now, step
    self.write({"kind": "speed", "step": step, "tokens_per_s": rate})
    return loss, rate


def build_model(config: ml_collections.ConfigDict, seed: int, mesh=None) -> tuple[nnx.GraphDef, dict, WaveFieldLM]:
  """The model, its graph definition, and its parameters as a pure dict (what the train state holds)."""
  model = WaveFieldLM(config.model, rngs=nnx.Rngs(seed), mesh=mesh)
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state), model


def param_labels(tree: nnx.Module | nnx.State) -> nnx.State:
  """Labels for `optax.multi_transform`: "wave" for the physical constants (`WaveParam`), "no_decay" for
  norms, biases and embeddings, "decay" for the other matrices.

  Args:
    tree: any NNX module (its `nnx.Param`s are labelled) or a state of its variables, e.g.
      `nnx.state(model, nnx.Param)`, which `nnx.Optimizer(model, tx, wrt=nnx.Param)` passes to `tx`.

  Returns:
    the state's structure with a label in place of each variable.
  """
  state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree

  def label(path, variable) -> str:
    if isinstance(variable, WaveParam):
      return "wave"
    name = getattr(path[-1], "key", path[-1])
    return "decay" if variable.ndim >= 2 and name != "embedding" else "no_decay"

  return jax.tree_util.tree_map_with_path(label, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_state(
  config: ml_collections.ConfigDict, seed: int, mesh=None
) -> tuple[nnx.GraphDef, State, optax.GradientTransformation]:
  """A fresh train state {"params", "opt_state", "step", "rng"}, its graph definition and the optimizer.
  With a mesh, the model's wave layers run their convolution sharded over it (see `sharding`)."""
  graphdef, params, model = build_model(config, seed, mesh)
  optimizer = make_optimizer(config.train, nnx.to_pure_dict(param_labels(model)))
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

  adamw = functools.partial(optax.adamw, b2=0.95)  # the shorter memory of LM training (GPT-3, Chinchilla)
  groups = {
    "decay": adamw(schedule(train.learning_rate), weight_decay=train.weight_decay),
    "no_decay": adamw(schedule(train.learning_rate), weight_decay=0.0),
    "wave": adamw(schedule(train.wave_learning_rate), weight_decay=0.0),
  }
  return optax.chain(optax.clip_by_global_norm(train.grad_clip), optax.multi_transform(groups, labels))


def token_losses(
  graphdef: nnx.GraphDef, params: dict, batch: jax.Array, segment_ids: jax.Array | None = None
) -> jax.Array:
  """Next-token cross entropy in nats, [B, L], for windows batch [B, L + 1] and, to keep the documents of
  a window apart, their segment ids [B, L + 1]."""
  model = nnx.merge(graphdef, params)
  inputs_segments = None if segment_ids is None else segment_ids[:, :-1]
  return model.token_losses(batch[:, :-1], batch[:, 1:], inputs_segments)


# XLA's CPU compiler (jaxlib 0.10) hands reductions to YNNPACK fusions, which are many times slower over an
# array whose leading axis is 1: one sequence per step (the long-context case) then costs several times as
# much per token. Without them the cost per token is flat in L (benchmarks/long_context).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> dict:
  """Options for the jitted steps: CPU_COMPILER_OPTIONS on a CPU whose XLA knows them, else none."""
  if jax.default_backend() != "cpu":
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS)(jnp.zeros(()))
  except jax.errors.JaxRuntimeError:  # an XLA without YNNPACK fusions: nothing to turn off
    return {}
  return dict(CPU_COMPILER_OPTIONS)


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  skip_nonfinite: bool,
  shardings: tuple[Any, Any] | None = None,
) -> Callable:
  """The jitted step: (state, batch [B, L + 1], weights [B, L] or None, segment_ids [B, L + 1] or None) ->
  (state, metrics), state donated.

  The loss is the mean next-token cross entropy, or its weighted mean where weights are given (e.g. only
  the answers of a recall task); segment ids keep the documents of each window apart. Metrics: "loss",
  "grad_norm", "finite". With shardings = (state shardings, batch sharding) the step is compiled for them
  (see `sharding`); the compiled step then takes all four arguments by position (None where absent), as
  jit takes no keywords with in_shardings.
  """

  def loss_fn(params, batch, weights, segment_ids):
    losses = token_losses(graphdef, params, batch, segment_ids)  # [B, L]
    if weights is None:
      return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

  def step(
    state: State, batch: jax.Array, weights: jax.Array | None = None, segment_ids: jax.Array | None = None
  ) -> tuple[State, dict]:
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, weights, segment_ids)
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
    return jax.jit(step, donate_argnums=0, compiler_options=compiler_options())
  state_sharding, batch_sharding = shardings
  return jax.jit(
    step,
    in_shardings=(state_sharding, batch_sharding, batch_sharding, batch_sharding),
    out_shardings=(state_sharding, None),
    donate_argnums=0,
    compiler_options=compiler_options(),
  )


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """(params, windows [B, L + 1], weights [B, L], token_bytes [V], segment_ids [B, L + 1] or None) ->
  (summed nats, summed bytes, tokens)."""

  @functools.partial(jax.jit, compiler_options=compiler_options())
  def step(params, windows, weights, token_bytes, segment_ids=None):
    losses = token_losses(graphdef, params, windows, segment_ids)
    return (losses * weights).sum(), (token_bytes[windows[:, 1:]] * weights).sum(), weights.sum()

  return step


def evaluate(
  eval_step: Callable,
  params: dict,
  windows: np.ndarray,
  weights: np.ndarray,
  token_bytes: np.ndarray,
  batch_size: int,
  segment_ids: np.ndarray | None = None,
) -> dict:
  """Loss per token (nats) and bits per byte over all windows, batch by batch (documents kept apart where
  the windows' segment ids are given)."""
  nats = bytes_ = tokens = 0.0
  for start in range(0, len(windows), batch_size):
    w, m = windows[start : start + batch_size], weights[start : start + batch_size]
    pad = batch_size - len(w)  # one compiled shape: pad the last batch with zero-weight windows
    w, m = np.pad(w, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))
    ids = None if segment_ids is None else np.pad(segment_ids[start : start + batch_size], ((0, pad), (0, 0)))
    n, b, t = eval_step(params, w, m, token_bytes, ids)
    nats, bytes_, tokens = nats + float(n), bytes_ + float(b), tokens + float(t)
  return {"loss": nats / tokens, "bpb": nats / math.log(2) / bytes_, "tokens": int(tokens), "bytes": int(bytes_)}


def training_sample(
  graphdef: nnx.GraphDef, params: dict, corpus: input_pipeline.Corpus, train: ml_collections.ConfigDict, rng: jax.Array
) -> str:
  """The text sample shown at an evaluation: `train.sample_tokens` after `train.sample_prompt` ("" for none)."""
  if train.sample_tokens == 0:
    return ""
  model = nnx.merge(graphdef, params)
  prompt = corpus.tokenizer.encode(train.sample_prompt)[None] if train.sample_prompt else np.asarray([[0]])
  tokens = generate(model, prompt, train.sample_tokens, temperature=train.sample_temperature, top_k=None, rng=rng)
  return corpus.tokenizer.decode(np.asarray(tokens[0]))


@dataclasses.dataclass
class Run:
  """What the loop needs, built once by `setup_run`: the compiled step, the state it advances (restored
  if the workdir has a checkpoint), the data iterator at the matching position, and the checkpointer."""

  graphdef: nnx.GraphDef
  state: State
  train_step: Callable
  # A grain iterator: next() gives this process's [B / processes, L + 1] windows, or (windows, segment ids)
  # when documents are kept apart.
  batches: Any
  to_global: Callable[[np.ndarray], jax.Array]  # this process's windows -> (its part of) the global batch
  checkpointer: Checkpointer
  start: int

  def next_batch(self) -> tuple[jax.Array, jax.Array | None]:
    """The next global batch [B, L + 1] and its segment ids [B, L + 1] (None unless data.document_mask)."""
    batch = next(self.batches)
    windows, ids = batch if isinstance(batch, tuple) else (batch, None)
    return self.to_global(windows), None if ids is None else self.to_global(ids)

  def save(self, step: int, force: bool = False) -> None:
    self.checkpointer.save(step, self.state, self.batches.get_state(), force=force)


def setup_run(config: ml_collections.ConfigDict, workdir: Path, corpus: input_pipeline.Corpus) -> Run:
  """The mesh over every device (data, and optionally sequence, parallel), the train state sharded over
  it, the jitted step, and the latest checkpoint with its data position restored into both."""
  from wavefield_jax import input_pipeline  # grain and TFDS load with a run's data, not with the step

  train = config.train
  mesh = None
  if jax.device_count() > 1:
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

  def to_global(local: np.ndarray) -> jax.Array:
    if mesh is None:
      return jnp.asarray(local)
    return jax.make_array_from_process_local_data(shardings[1], local)

  batches = iter(
    input_pipeline.train_dataset(
      corpus.tokens["train"],
      config.data.seq_len,
      train.batch_size // jax.process_count(),  # train.batch_size is the global batch
      config.seed,
      jax.process_index(),
      jax.process_count(),
      corpus.starts["train"] if config.data.document_mask else None,
    )
  )
  checkpointer = Checkpointer(workdir / "checkpoints", keep=train.keep_checkpoints)
  restored = checkpointer.restore_latest(state, fallback=train.restore_fallback)
  if restored is not None:
    _, state, data_state = restored
    batches.set_state(data_state)
  train_step = make_train_step(graphdef, optimizer, train.on_nonfinite == "skip", shardings)
  return Run(graphdef, state, train_step, batches, to_global, checkpointer, int(state["step"]))


class Evaluator:
  """Validation loss and bits per byte of the train state's parameters, and a sample, at a step; both are
  recorded (metrics.jsonl, samples.txt) unless `record=False`."""

  def __init__(self, run: Run, config: ml_collections.ConfigDict, corpus: input_pipeline.Corpus, log: MetricsLog):
    from wavefield_jax import input_pipeline

    self.run, self.train, self.corpus, self.log = run, config.train, corpus, log
    self.eval_step = make_eval_step(run.graphdef)
    starts = corpus.starts["validation"] if config.data.document_mask else None
    self.windows, self.weights, *ids = input_pipeline.eval_windows(
      corpus.tokens["validation"], config.data.seq_len, self.train.eval_windows or None, starts
    )
    self.segment_ids = ids[0] if ids else None
    self.token_bytes = jnp.asarray(corpus.tokenizer.token_bytes)
    self.samples_path = log.path.parent / "samples.txt"

  def __call__(self, step: int, record: bool = True) -> dict:
    state = self.run.state
    result = evaluate(
      self.eval_step,
      state["params"],
      self.windows,
      self.weights,
      self.token_bytes,
      self.train.batch_size,
      self.segment_ids,
    )
    if record:
      self.log.write({"kind": "eval", "step": step} | result)
    text = ""
    if jax.process_count() == 1:  # sampling runs on one process's devices: left out of multi-process runs
      rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
      text = training_sample(self.run.graphdef, state["params"], self.corpus, self.train, rng)
    if self.log.lead and record:
      with self.samples_path.open("a") as f:
        f.write(f"--- step {step}, validation {result['bpb']:.3f} bits per byte ---\n{text}\n\n")
    return result | {"sample": text}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupt_requests():
  """While open, Ctrl-C (SIGINT) and a preemption notice (SIGTERM) only append to the yielded list: the
  loop finishes its step, saves, and stops."""
  requests: list[int] = []
  previous = {sig: signal.signal(sig, lambda number, _: requests.append(number)) for sig in STOP_SIGNALS}
  try:
    yield requests
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def stop_requested(requests: list[int], step: int, every: int) -> bool:
  """Whether any process was asked to stop. One process decides at once; several agree at every
  `every`-th step (one small collective there), so that all of them stop after the same step and
  write the same checkpoint."""
  if jax.process_count() == 1:
    return bool(requests)
  if step % every:
    return False
  return bool(np.any(multihost_utils.process_allgather(np.int32(len(requests) > 0))))


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, corpus: input_pipeline.Corpus | None = None
) -> dict:
  """Trains config in workdir, resuming from its latest checkpoint; returns the final metrics.

  Writes workdir/metrics.jsonl (one JSON line per log and evaluation), workdir/loss.png,
  workdir/samples.txt and orbax checkpoints under workdir/checkpoints.
  """
  from wavefield_jax import input_pipeline

  validate_config(config)
  workdir = Path(workdir).expanduser().resolve()
  check_workdir(workdir, config)
  corpus = corpus or input_pipeline.load_corpus(config.data)
  if corpus.tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(
      f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's {corpus.tokenizer.vocab_size}"
    )
  train = config.train
  run = setup_run(config, workdir, corpus)
  log = MetricsLog(
    workdir / "metrics.jsonl",
    lead=jax.process_index() == 0,  # one process writes metrics, samples and plots
    on_nonfinite=train.on_nonfinite,
    tokens_per_step=train.batch_size * config.data.seq_len,
    start=run.start,
    checkpoints=run.checkpointer.directory,
  )
  evaluate_at = Evaluator(run, config, corpus, log)
  counts = count_params(nnx.merge(run.graphdef, run.state["params"]))
  mixers = tuple(config.model.mixers)
  print(f"model: {counts['total']:,} parameters ({counts['wave_constants']} physical constants); mixers {mixers}")
  if run.start:
    print(f"resuming from step {run.start} in {workdir}")

  with interrupt_requests() as interrupted, contextlib.closing(run.checkpointer):
    with tqdm(total=train.steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True) as bar:
      for step in range(run.start + 1, train.steps + 1):  # `step`: the step the state reaches
        batch, segment_ids = run.next_batch()
        run.state, metrics = run.train_step(run.state, batch, None, segment_ids)
        log.add(step, metrics)
        bar.update(1)
        if step % train.log_every == 0 or step == train.steps:
          loss, rate = log.log_progress(step)
          bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
        if step % train.eval_every == 0 and step != train.steps:
          log.flush()
          result = evaluate_at(step)
          bar.write(f"step {step}: validation loss {result['loss']:.4f}, {result['bpb']:.4f} bits per byte")
        interrupt = stop_requested(interrupted, step, train.log_every)  # on any process
        stopping = interrupt or step == train.stop_at
        if step % train.checkpoint_every == 0 or step == train.steps or stopping:
          log.flush()  # never save parameters that a non-finite step produced
          run.save(step, force=stopping)
        if stopping:
          run.checkpointer.wait()
          why = "interrupted" if interrupt else f"stopped at train.stop_at={train.stop_at}"
          print(f"{why}: saved step {step} in {run.checkpointer.directory}; rerun the same command to resume")
          return {"step": step, "interrupted": True}
    run.checkpointer.wait()
    final = int(run.state["step"])
    result = evaluate_at(final, record=final > run.start)  # a finished run started again adds no second record
    if log.lead:
      plot_losses(log.path, workdir / "loss.png")
  return result | {"step": final}
