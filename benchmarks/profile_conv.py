"""Where the time goes: each method of the wave convolution op by op, and the mixer against its projections.

At L = 32k (B=1, D=512, 8 heads, float32, median of 5):
- the FFT method and the bare rfft + irfft on data already laid out [B, H, K, L], then each op of the FFT
  method's compiled program on its own (XLA makes five: transpose + zero-pad in, rfft, the spectral product,
  irfft, slice + transpose out; the floor's program is pad, rfft, irfft, slice), and the kernel with its
  spectrum;
- the matmul method (T = 32, its default) beside one memory pass over u (u * 2), then its pieces: the in-chunk Toeplitz
  matmul (with the layout copies XLA puts around it), the chunk end states, the grouped scan of the states
  entering each chunk, and their read-out, forward and forward + backward;
at L = 8k the wave mixer's forward against its projections alone (in: D -> 4D, out: D -> D); and the wave
convolution's forward + backward by each method at the default model's shape (4 heads of 32, 8192 tokens).

  python -m benchmarks.profile_conv
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


def median_ms(fn, x) -> float:
  return 1e3 * common.time_call(lambda: jax.block_until_ready(fn(x)), repeats=5, warmup=1)["median_s"]


def matmul_pieces(u: jax.Array, c: jax.Array, g: jax.Array, p: jax.Array, chunk_size: int = 32) -> dict[str, float]:
  """Median ms of the matmul method and of each of its pieces, forward and forward + backward."""
  from wavefield_jax import physics
  from wavefield_jax.physics import _common

  batch, length, heads, channels = u.shape
  x = u.reshape(batch, length // chunk_size, chunk_size, heads, channels)  # [B, C, T, H, K]
  local_states = _common.chunk_end_states(x, c, g)  # [B, C, H, K]
  initial = jnp.zeros_like(local_states[:, 0])
  entering = _common.entering_states(local_states, c, g, chunk_size, initial)
  response = _common.carried_response(c, g, p, chunk_size)  # [H, T]
  pieces = {
    "matmul method": (lambda x: physics.wave_conv(x, c, g, p, method="matmul", chunk_size=chunk_size), u),
    "memory floor (u * 2)": (lambda x: x * 2, u),
    "piece: in-chunk Toeplitz matmul": (
      lambda x: physics.wave._local_conv(x, c, g, p, "matmul", jnp.float32),
      x,
    ),
    "piece: chunk end states": (lambda x: _common.chunk_end_states(x, c, g), x),
    "piece: states entering chunks (grouped scan)": (
      lambda z: _common.entering_states(z, c, g, chunk_size, initial),
      local_states,
    ),
    "piece: read-out of the entering states": (lambda s: _common.readout(response, s), entering),
  }
  times = {}
  for name, (fn, arg) in pieces.items():
    times[name] = median_ms(jax.jit(fn), arg)
    real = lambda a, fn=fn: jnp.sum(jnp.abs(fn(a)) ** 2)  # noqa: E731
    times[name + ", forward + backward"] = median_ms(jax.jit(jax.grad(real)), arg)
  return times


def main() -> None:
  from flax import nnx

  from wavefield_jax import head_constants, layers, physics

  rng = np.random.default_rng(0)
  length, dim, heads = 32768, 512, 8
  u = jnp.asarray(rng.standard_normal((1, length, heads, dim // heads)), jnp.float32)
  c, g, p = head_constants.initial_constants(heads, length, jax.random.key(0))
  n = physics.fft_length(length)
  u_heads_last = jnp.transpose(u, (0, 2, 3, 1))  # [B, H, K, L]
  padding = ((0, 0), (0, 0), (0, 0), (0, n - length))
  padded = jnp.pad(u_heads_last, padding)  # [B, H, K, n]
  u_hat = jnp.fft.rfft(padded, axis=-1)  # [B, H, K, F]
  k_hat = jnp.fft.rfft(physics.wave_kernel(c, g, p, length), n=n)  # [H, F]
  y_padded = jnp.fft.irfft(u_hat, n=n, axis=-1)  # [B, H, K, n]
  conv = {
    "fft method": (jax.jit(lambda x: physics.wave_conv(x, c, g, p, method="fft")), u),
    "rfft + irfft (floor)": (
      jax.jit(lambda x: jnp.fft.irfft(jnp.fft.rfft(x, n=n, axis=-1), n=n, axis=-1)[..., :length]),
      u_heads_last,
    ),
    "op: transpose + pad (wave_conv in)": (jax.jit(lambda x: jnp.pad(jnp.transpose(x, (0, 2, 3, 1)), padding)), u),
    "op: pad (floor in)": (jax.jit(lambda x: jnp.pad(x, padding)), u_heads_last),
    "op: rfft": (jax.jit(lambda x: jnp.fft.rfft(x, axis=-1)), padded),
    "op: spectral product": (jax.jit(lambda x: x * k_hat[None, :, None, :]), u_hat),
    "op: irfft": (jax.jit(lambda x: jnp.fft.irfft(x, n=n, axis=-1)), u_hat),
    "op: slice + transpose (wave_conv out)": (
      jax.jit(lambda y: jnp.transpose(y[..., :length], (0, 3, 1, 2))),
      y_padded,
    ),
    "op: slice (floor out)": (jax.jit(lambda y: y[..., :length]), y_padded),
    "kernel + spectrum": (jax.jit(lambda c: jnp.fft.rfft(physics.wave_kernel(c, g, p, length), n=n)), c),
  }
  rows = [[f"L={length:,}", name, f"{median_ms(fn, x):,.1f}"] for name, (fn, x) in conv.items()]
  rows += [[f"L={length:,}", name, f"{ms:,.1f}"] for name, ms in matmul_pieces(u, c, g, p).items()]
  mixer = layers.WaveFieldMixer(dim, heads, max_len=8192, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(mixer)
  x = jnp.asarray(rng.standard_normal((1, 8192, dim)), jnp.float32)

  def projections(x):
    m = nnx.merge(graphdef, state)
    return m.output.out_proj(m.sources.in_proj(x)[..., :dim])

  rows.append(
    ["L=8,192", "wave mixer forward", f"{median_ms(jax.jit(lambda x: nnx.merge(graphdef, state)(x)), x):,.1f}"]
  )
  rows.append(["L=8,192", "its projections alone", f"{median_ms(jax.jit(projections), x):,.1f}"])
  # The convolution at the default model's shape (D=128: 4 heads of 32), a train step's 8192 tokens.
  u_small = jnp.asarray(rng.standard_normal((1, 8192, 4, 32)), jnp.float32)
  c4, g4, p4 = head_constants.initial_constants(4, 8192, jax.random.key(0))
  for method in ("fft", "matmul"):
    loss = lambda u, c, g, p, m=method: jnp.sum(physics.wave_conv(u, c, g, p, method=m))  # noqa: E731
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    ms = median_ms(lambda u, grad=grad: grad(u, c4, g4, p4), u_small)
    rows.append(["B=1, L=8,192, H=4, K=32", f"default model's wave conv forward + backward, {method}", f"{ms:,.1f}"])
  table = common.markdown_table(rows, ["shape", "what", "median ms"])
  common.write_results("profile_conv", {"machine": common.machine(), "rows": rows}, table)


if __name__ == "__main__":
  main()
