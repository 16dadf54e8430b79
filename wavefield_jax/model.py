"""WaveFieldLM: embeddings, pre-norm blocks with a mixer chosen per layer, a head tied to the embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wavefield_jax import layers, losses, mixers
from wavefield_jax.config import validate_model_config
from wavefield_jax.sharding import DATA, SEQ

# model.remat: what each block keeps for the backward pass (jax.checkpoint policies over the tensors that
# `layers` names with checkpoint_name). "none" keeps everything autodiff saves; "full" keeps only each
# block's input and recomputes the block; "projections" keeps the mixers' input projections and the MLPs'
# outputs, recomputing the cheap rest (the wave convolution, norms, gates); "offload" keeps the same
# tensors in host memory instead of device memory.
SAVED_NAMES = (layers.PROJECTION, layers.MLP_OUTPUT)
CHECKPOINT_POLICIES = {  # one per name in config.REMAT_POLICIES
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "projections": jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES),
  "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
    names_which_can_be_saved=[],
    names_which_can_be_offloaded=list(SAVED_NAMES),
    offload_src="device",
    offload_dst="pinned_host",
  ),
}


def check_remat_backend(policy: str) -> None:
  """'offload' moves saved tensors to pinned host memory, which only GPUs and TPUs have apart from their
  own: on a CPU (whose "pinned host" memory is the same RAM) it would save nothing, so it is refused."""
  if policy != "offload":
    return
  kinds = {memory.kind for memory in jax.devices()[0].addressable_memories()}
  if jax.default_backend() == "cpu" or "pinned_host" not in kinds:
    raise ValueError(
      f"model.remat='offload' needs a GPU or TPU with pinned host memory; this backend is {jax.default_backend()}"
      " (on a CPU use 'full' or 'projections')"
    )


def rematerialised(fn, policy):
  """fn(params, x, segment_ids) under jax.checkpoint(policy), its backward pass kept in a computation of its own.

  XLA's CPU scheduler runs the recomputed forwards of an unrolled stack of checkpointed blocks early, all
  together, and keeps their results alive: the compiled step's temporaries then equal those of no remat at
  all. A conditional (both branches the same) makes each block's recompute wait for that block's incoming
  gradient; the predicate is one reduction of it.
  """
  checkpointed = jax.checkpoint(fn, policy=policy)

  @jax.custom_vjp
  def run(params, x, segment_ids):
    return fn(params, x, segment_ids)

  def forward(params, x, segment_ids):
    # The vjp closure holds what the policy saves; the integer segment ids get a float0 cotangent.
    return jax.vjp(checkpointed, params, x, segment_ids)

  def backward(pullback, cotangent):
    backward_pass = lambda pullback, cotangent: pullback(cotangent)  # noqa: E731
    ready = jnp.isfinite(jnp.sum(cotangent))
    return jax.lax.cond(ready, backward_pass, backward_pass, pullback, cotangent)

  run.defvjp(forward, backward)
  return run


class WaveFieldLM(nnx.Module):
  """A decoder-only language model whose token mixers are wave fields, attention, or a mix of both.

  Call it on tokens [B, L] for logits [B, L, V] (float32). For generation, `init_cache`, `prefill`
  (the parallel paths over a prompt) and `step` (one token, O(1) for wave layers) share every weight.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, mesh: jax.sharding.Mesh | None = None):
    """mesh: a ("data", "seq") mesh: activations are split over both axes, and wave layers convolve
    their own positions (see `sequence_parallel`)."""
    validate_model_config(config)
    check_remat_backend(config.remat)
    self.config = config
    self.mesh = mesh
    dtype = jnp.dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab_size, config.dim, dtype=dtype, rngs=rngs)
    blocks = []
    for kind in config.mixers:
      mixer = mixers.kind(kind).build(config, dtype, mesh, rngs)
      blocks.append(layers.Block(mixer, config.dim, config.mlp_dim, dtype=dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.final_norm = nnx.RMSNorm(config.dim, dtype=dtype, rngs=rngs)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] float32, through the transposed embedding."""
    return self.embed.attend(self.final_norm(hidden)).astype(jnp.float32)

  def blocks_output(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """The last block's output [B, L, D] from input embeddings [B, L, D], under the `remat` policy; with
    segment ids [B, L], every mixer keeps the documents of a packed row apart."""
    policy = CHECKPOINT_POLICIES[self.config.remat]
    for block in self.blocks:
      if self.config.remat == "none":
        x = block(x, segment_ids)
        continue
      # Each residual branch on its own: the backward pass then holds one branch's recomputed activations
      # at a time (the mixer's or the MLP's), not both.
      graphdef, params = nnx.split(block)
      for branch in (layers.Block.mix, layers.Block.feed_forward):

        def apply(params, x, segment_ids, branch=branch, graphdef=graphdef):
          return branch(nnx.merge(graphdef, params), x, segment_ids)

        x = rematerialised(apply, policy)(params, x, segment_ids)
    return x

  def from_embeddings(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Logits [B, L, V] from input embeddings [B, L, D]; the gradient path used to check causality."""
    return self.logits(self.blocks_output(x, segment_ids))

  def _embed(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens)  # [B, L, D]
    if self.mesh is not None:
      # Every layer then works on its own positions: without this only the wave convolution does, and
      # attention, the MLPs and the logits run whole on every device of a `seq` group.
      x = jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(DATA, SEQ)))
    return x

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """tokens [B, L] int -> logits [B, L, V] float32.

    segment_ids: optional [B, L] integers, one value per document of a packed row (any values; a new
      document starts where the id changes): no mixer lets anything cross a document start, so each
      document's logits are those it has alone."""
    return self.from_embeddings(self._embed(tokens), segment_ids)

  def token_losses(self, tokens: jax.Array, targets: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Next-token cross entropy in nats [B, L] for tokens [B, L] and their targets [B, L].

    With `loss_chunk_size` the head and the loss run over tiles of that many positions (`losses`), so
    the [B, L, V] logits never exist; the result and its gradients are those of the dense logits."""
    hidden = self.blocks_output(self._embed(tokens), segment_ids)  # [B, L, D]
    if self.config.loss_chunk_size is None:
      return losses.dense_cross_entropy(self.logits(hidden), targets)
    normed = self.final_norm(hidden)
    return losses.tiled_cross_entropy(normed, self.embed.embedding[...], targets, self.config.loss_chunk_size)

  def init_cache(self, batch_size: int, max_len: int) -> list:
    """One cache per layer for decoding up to `max_len` positions in total."""
    return [block.mixer.init_cache(batch_size, max_len) for block in self.blocks]

  def prefill(self, tokens: jax.Array, cache: list) -> tuple[jax.Array, list]:
    """tokens [B, L] continuing the cache: logits [B, L, V] and the advanced cache."""
    x = self.embed(tokens)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x, layer_cache = block.prefill(x, layer_cache)
      new_cache.append(layer_cache)
    return self.logits(x), new_cache

  def step(self, token: jax.Array, cache: list) -> tuple[jax.Array, list]:
    """token [B] int -> logits [B, V] float32 for the next position, and the advanced cache."""
    x = self.embed(token)  # [B, D]
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x, layer_cache = block.step(x, layer_cache)
      new_cache.append(layer_cache)
    return self.logits(x), new_cache


def count_params(model: nnx.Module) -> dict[str, int]:
  """Parameter counts: `total`, the physical constants (`wave_constants`, 3 per wave head) and the rest."""
  total = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
  physical = sum(a.size for a in jax.tree.leaves(nnx.state(model, layers.WaveParam)))
  return {"total": total, "wave_constants": physical, "other": total - physical}
