"""Model configuration: defaults and the checks run once, when a model or a run starts."""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import ml_collections

from wavefield_jax.head_constants import SPEED_INITS
from wavefield_jax.mixers import REGISTRY
from wavefield_jax.physics import METHODS as WAVE_METHODS

REPO = Path(__file__).resolve().parent.parent


def shipped_file(folder: str, name: str) -> Path:
  """A file the project ships (folder "configs" or "data"): `folder/name` of the checkout this package runs
  from, else the copy an installed wheel carries (`wavefield_jax.shipped_<folder>`, see pyproject.toml)."""
  checkout = REPO / folder / name
  if checkout.exists():
    return checkout
  return Path(str(importlib.resources.files(f"wavefield_jax.shipped_{folder}") / name))


def config_file(argument: str) -> str:
  """A --config value ("path[:argument]") as given where its file exists, else the shipped config of that
  file name (outside a checkout, `configs/small.py:hybrid` means the one the wheel carries)."""
  path, colon, rest = argument.partition(":")
  if Path(path).exists():
    return argument
  try:
    shipped = shipped_file("configs", Path(path).name)
  except ModuleNotFoundError:  # neither a checkout nor a wheel with configs: absl names the missing file
    return argument
  return f"{shipped}{colon}{rest}" if shipped.exists() else argument


DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")
REMAT_POLICIES = ("none", "full", "projections", "offload")
TOKENIZERS = ("bytes", "gpt2", "hf:PATH")  # hf:PATH: a Hugging Face tokenizer.json
SOURCES = ("shakespeare", "local_text", "wikitext103", "tfds", "prepared")
# The two-layer models by name, bottom layer first: the small and tiny configs, recall and the tests.
TWO_LAYER_MIXERS = {
  "wave": ("wave", "wave"),
  "transformer": ("attention", "attention"),
  "hybrid": ("wave", "attention"),
  "hybrid_local": ("wave", "local"),
  "selective": ("selective", "selective"),
  "retention": ("retention", "retention"),
  "selective_retention": ("selective", "retention"),
  "selective_local": ("selective", "local"),
  "retention_local": ("retention", "local"),
}


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The model section of a config, with every key defaulted.

  Keys:
    vocab_size: tokens in the vocabulary (256 for bytes).
    dim: model width D.
    num_layers: number of blocks.
    num_heads: heads per mixer; D / num_heads channels each.
    mixers: one mixer per layer, a mix is a hybrid: "wave" (the damped wave field), "selective" (the wave on a
      data-dependent clock), "retention" (the wave weighting the query-key match), "attention" or "local"
      (sliding-window attention).
    mlp_dim: hidden width of the gated MLP.
    conv_width: width of the wave mixer's short causal conv.
    max_len: the training context; it sets the slowest initial damping (1 / max_len).
    speed_init: the wave-family heads' starting speeds: "spread" over (0, pi] (the default) or "tied" to
      each head's damping, so the global heads start as near-integrators (head_constants.initial_constants); what
      recall across a long context needs.
    wave_method: how wave layers convolve, "auto", "fft" or "matmul" (the same result; see physics.wave_conv).
    wave_chunk_size: positions per chunk of the wave, selective and retention layers; None for each one's default.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    attention_impl: None, "xla" or "cudnn" for jax.nn.dot_product_attention.
    window: positions each "local" layer attends to, itself included (its decode cache holds as many).
    remat: what each block keeps for the backward pass: "none" (everything; the fastest step), "full"
      (only its input: the least memory, one more forward per step), "projections" (the input projections
      and MLP outputs) or "offload" (those, in host memory). "none" by default: at the default size and
      L = 256 the activations are a few MB, and recomputing costs time for memory nobody needs.
    loss_chunk_size: positions per tile of the tiled head and cross entropy, so that the [B, L, V] logits
      never exist; None (the default) for dense logits, which are small with the 256-token byte vocabulary.
      Long contexts with GPT-2's 50,257 tokens want tiles (configs/long_context.py).
  """
  config = ml_collections.ConfigDict(
    dict(
      vocab_size=256,
      dim=128,
      num_layers=4,
      num_heads=4,
      mixers=("wave",) * 4,
      mlp_dim=384,
      conv_width=4,
      max_len=256,
      speed_init="spread",
      wave_method="auto",
      wave_chunk_size=ml_collections.FieldReference(None, field_type=int),
      dtype="float32",
      attention_impl=ml_collections.FieldReference(None, field_type=str),
      window=64,
      remat="none",
      loss_chunk_size=ml_collections.FieldReference(None, field_type=int),
    )
  )
  config.update(overrides)
  return config


def _require_int(name: str, value, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {what}; got {value!r}")


def _require_number(name: str, value, minimum: float, strict: bool) -> None:
  number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not number or value < minimum or (strict and value == minimum):
    raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}; got {value!r}")


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key of the first invalid value."""
  for key in ("vocab_size", "dim", "num_layers", "num_heads", "mlp_dim", "conv_width", "max_len", "window"):
    _require_int(f"model.{key}", config.get(key), 1)
  if config.dim % config.num_heads:
    raise ValueError(f"model.dim={config.dim} must be divisible by model.num_heads={config.num_heads}")
  if not isinstance(config.mixers, (tuple, list)):
    raise ValueError(f"model.mixers must be a tuple of mixer names, one per layer; got {config.mixers!r}")
  mixers = tuple(config.mixers)
  if len(mixers) != config.num_layers:
    raise ValueError(
      f"model.mixers must name one mixer per layer (model.num_layers={config.num_layers}); got {len(mixers)}: {mixers}"
    )
  unknown = [m for m in mixers if m not in REGISTRY]
  if unknown:
    raise ValueError(f"model.mixers has unknown mixer {unknown[0]!r}; choose from {tuple(REGISTRY)}")
  if any(REGISTRY[m].rotary for m in mixers) and (config.dim // config.num_heads) % 2:
    raise ValueError(
      f"model.dim / model.num_heads must be even for rotary attention; got {config.dim // config.num_heads}"
    )
  if config.speed_init not in SPEED_INITS:
    raise ValueError(f"model.speed_init must be one of {SPEED_INITS}; got {config.speed_init!r}")
  if config.wave_method not in WAVE_METHODS:
    raise ValueError(f"model.wave_method must be one of {WAVE_METHODS}; got {config.wave_method!r}")
  if config.wave_chunk_size is not None:
    _require_int("model.wave_chunk_size", config.wave_chunk_size, 1)
  if config.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {DTYPES}; got {config.dtype!r}")
  if config.remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be one of {REMAT_POLICIES}; got {config.remat!r}")
  if config.loss_chunk_size is not None:
    _require_int("model.loss_chunk_size", config.loss_chunk_size, 1)
  if config.attention_impl not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"model.attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}; got {config.attention_impl!r}")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a training run with its default; configs/*.py start from this and change a few."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()
  config.data = ml_collections.ConfigDict(
    dict(
      source="shakespeare",  # shakespeare | local_text | wikitext103 | tfds | prepared
      tokenizer="bytes",  # bytes | gpt2 | hf:PATH (a tokenizer.json)
      seq_len=256,
      document_mask=False,  # keep the documents of a window apart in every mixer (segment ids)
      prepared_dir="",  # prepared: the output directory of wavefield-prepare
      files=ml_collections.ConfigDict({"train": ""}),  # local_text: {split: glob or [globs]}
      tfds_dir="~/tensorflow_datasets",
      manual_dir="~/tensorflow_datasets/downloads/manual",
      tfds_name="",
      text_key="text",
      tfds_validation_split="validation",
      tfds_test_split="test",
    )
  )
  # With several devices: a (data, seq) mesh over all of them, data = devices / seq; fsdp splits the
  # parameters, gradients and optimizer state over all the devices instead of replicating them.
  config.mesh = ml_collections.ConfigDict(dict(seq=1, fsdp=False))
  config.train = ml_collections.ConfigDict(
    dict(
      steps=1000,
      stop_at=0,  # > 0: save and stop at this step (the schedule still runs to `steps`); rerun to go on
      batch_size=8,
      learning_rate=3e-3,
      wave_learning_rate=3e-3,  # the physical constants: their own rate, never weight decay
      warmup_steps=100,
      final_learning_rate_fraction=0.1,
      weight_decay=0.1,
      grad_clip=1.0,
      log_every=25,
      eval_every=500,
      eval_windows=64,  # validation windows per evaluation (0: the whole split)
      checkpoint_every=250,
      keep_checkpoints=3,
      sample_tokens=300,
      sample_prompt="\n",
      sample_temperature=0.8,
      on_nonfinite="stop",  # stop | skip (the batch, keeping the parameters and optimizer state)
      restore_fallback=False,  # resume from an older checkpoint when the newest is damaged
    )
  )
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks a whole run config once, at start; raises ValueError naming the key."""
  validate_model_config(config.model)
  data, train = config.data, config.train
  if data.tokenizer not in TOKENIZERS[:2] and not data.tokenizer.startswith("hf:"):
    raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}; got {data.tokenizer!r}")
  if data.source == "prepared" and not data.prepared_dir:
    raise ValueError("data.source='prepared' needs data.prepared_dir: a directory written by wavefield-prepare")
  if data.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}; got {data.source!r}")
  _require_int("data.seq_len", data.seq_len, 1)
  for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    _require_int(f"train.{key}", train[key], 1)
  for key in ("warmup_steps", "eval_windows", "sample_tokens", "stop_at"):
    _require_int(f"train.{key}", train[key], 0)
  for key in ("learning_rate", "wave_learning_rate", "grad_clip"):
    _require_number(f"train.{key}", train[key], 0.0, strict=True)
  for key in ("weight_decay", "final_learning_rate_fraction", "sample_temperature"):
    _require_number(f"train.{key}", train[key], 0.0, strict=False)
  _require_int("mesh.seq", config.mesh.seq, 1)
  if data.seq_len % config.mesh.seq:
    raise ValueError(f"data.seq_len={data.seq_len} must be divisible by mesh.seq={config.mesh.seq}")
  if train.on_nonfinite not in ("stop", "skip"):
    raise ValueError(f"train.on_nonfinite must be 'stop' or 'skip'; got {train.on_nonfinite!r}")
  if data.tokenizer == "gpt2" and config.model.vocab_size < 50257:
    raise ValueError(f"model.vocab_size must be >= 50257 for the gpt2 tokenizer; got {config.model.vocab_size}")
  if data.tokenizer == "bytes" and config.model.vocab_size < 256:
    raise ValueError(f"model.vocab_size must be >= 256 for the bytes tokenizer; got {config.model.vocab_size}")
