"""Train a Wave Field (or Transformer, or hybrid) language model: `wavefield_jax.train`, runnable from a checkout.

python train.py --config configs/default.py --workdir runs/default [--config.train.steps=3000]
"""

from wavefield_jax.train import main

if __name__ == "__main__":
  main()
