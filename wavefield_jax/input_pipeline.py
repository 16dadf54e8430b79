"""The input pipeline: token streams per split, grain batches for training, windows for evaluation.

The tokenizer turns each split into one token stream; grain cuts the training stream into windows of
`seq_len + 1` tokens, shuffles them with a seed (a new order each epoch), shards them by process and
batches them.
"""

from __future__ import annotations

import dataclasses

import grain
import ml_collections
import numpy as np

from wavefield_jax.sources import SPLITS, DataError, load_documents
from wavefield_jax.tokenizers import ByteTokenizer, GPT2Tokenizer, get_tokenizer


@dataclasses.dataclass
class Corpus:
  """One token stream per split, and how many bytes each token stands for (for bits per byte)."""

  tokens: dict[str, np.ndarray]
  tokenizer: ByteTokenizer | GPT2Tokenizer


def tokenize(documents: dict[str, list[bytes]], tokenizer, seq_len: int) -> Corpus:
  """Concatenates each split's documents into one stream; every split must fill one window."""
  tokens = {}
  for split in SPLITS:
    docs = documents.get(split, [])
    parts = []
    for doc in docs:
      parts.append(tokenizer.encode(doc))
      parts.append(np.asarray(tokenizer.separator, np.int32))
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    if stream.size == 0:
      raise DataError(f"the {split} split is empty: the corpus holds no text for it")
    if stream.size < seq_len + 1:
      raise DataError(
        f"the {split} split has {stream.size} tokens, fewer than one training window of seq_len + 1 = {seq_len + 1}; "
        "give more text or lower data.seq_len"
      )
    tokens[split] = stream
  return Corpus(tokens=tokens, tokenizer=tokenizer)


def load_corpus(data: ml_collections.ConfigDict) -> Corpus:
  """The token streams of config.data's source, tokenizer and window length."""
  return tokenize(load_documents(data), get_tokenizer(data.tokenizer), data.seq_len)


def train_dataset(
  tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1
) -> grain.MapDataset:
  """Endless batches [batch_size, seq_len + 1] of windows, reshuffled each epoch, one shard per process.

  Its iterator's `get_state()` / `set_state()` is the data position saved with each checkpoint.
  """
  num_windows = (tokens.size - 1) // seq_len
  if num_windows // shard_count < 1:
    raise DataError(
      f"{tokens.size} training tokens make {num_windows} windows of {seq_len}: fewer than the {shard_count} shards"
    )
  windows = grain.MapDataset.range(num_windows)[shard_index::shard_count].shuffle(seed=seed).repeat()
  windows = windows.map(lambda i: tokens[i * seq_len : i * seq_len + seq_len + 1])
  return windows.batch(batch_size, drop_remainder=True)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Windows covering the stream from its start, each target scored once.

  Consecutive windows of seq_len + 1 tokens with stride seq_len; where the stream does not fill the
  last one, that window is aligned to the end of the stream and only its new targets get weight.

  Returns:
    windows [N, seq_len + 1] int32 and weights [N, seq_len] float32 (1 for a scored target).
  """
  if tokens.size < 2:
    raise DataError(f"cannot score {tokens.size} token(s): at least 2 are needed (one to predict from)")
  targets = tokens.size - 1
  if targets < seq_len:  # shorter than one window: pad and score what is there
    window = np.pad(tokens, (0, seq_len + 1 - tokens.size))[None]
    return window.astype(np.int32), (np.arange(seq_len) < targets).astype(np.float32)[None]
  count = targets // seq_len
  starts = list(range(0, count * seq_len, seq_len))
  weights = [np.ones(seq_len, np.float32)] * count
  if targets % seq_len:
    starts.append(targets - seq_len)
    weights.append((np.arange(seq_len) >= seq_len - targets % seq_len).astype(np.float32))
  if max_windows is not None:
    starts, weights = starts[:max_windows], weights[:max_windows]
  index = np.asarray(starts)[:, None] + np.arange(seq_len + 1)[None, :]
  return tokens[index].astype(np.int32), np.stack(weights)
