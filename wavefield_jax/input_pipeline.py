"""The input pipeline: token streams per split, grain batches for training, windows for evaluation.

Every source is read from prepared shards (`prepare`), a corpus's own or a cache its first use writes;
`tokenize` builds the same streams in memory for callers that bring their own documents. Grain cuts the
training stream into windows of `seq_len + 1` tokens, shuffles them with a seed (a new order each epoch),
shards them by process and batches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import grain
import ml_collections
import numpy as np

from wavefield_jax.sources import SPLITS, DataError, load_documents, source_stamp
from wavefield_jax.tokenizers import Tokenizer, get_tokenizer, tokenizer_digest


@dataclasses.dataclass
class Corpus:
  """One token stream per split, where each of its documents starts, and the tokenizer (whose token
  lengths in bytes give bits per byte).

  A document starts at the separator that ends the one before it, so its first token is predicted from
  the separator alone when documents are kept apart (`window_segment_ids`); the first starts at 0.
  """

  tokens: dict[str, np.ndarray]
  tokenizer: Tokenizer
  starts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def window_segment_ids(starts, first: np.ndarray, length: int) -> np.ndarray:
  """Segment ids [N, length] int32 of the windows at positions `first` [N] of a stream whose documents
  start at `starts`: sorted positions (the number of starts at or before each position, so the ids change
  at each), or a prepared split, which reads them from its records."""
  if not isinstance(starts, np.ndarray):
    return starts.segment_ids(first, length)
  positions = np.asarray(first)[:, None] + np.arange(length)[None, :]
  return np.searchsorted(starts, positions, side="right").astype(np.int32)


def tokenize(documents: dict[str, list[bytes]], tokenizer, seq_len: int) -> Corpus:
  """Concatenates each split's documents into one stream; every split must fill one window."""
  tokens, starts = {}, {}
  for split in SPLITS:
    docs = documents.get(split, [])
    parts, ends = [], []
    for doc in docs:
      parts.append(tokenizer.encode(doc))
      ends.append(sum(map(len, parts)))  # the next document starts here, at this one's separator
      parts.append(np.asarray(tokenizer.separator, np.int32))
    starts[split] = np.asarray([0, *ends[:-1]], np.int64)
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    check_split_size(split, stream.size, seq_len)
    tokens[split] = stream
  return Corpus(tokens=tokens, tokenizer=tokenizer, starts=starts)


def check_split_size(split: str, size: int, seq_len: int) -> None:
  """Every split must fill one window of seq_len + 1 tokens; names the split and what to do if not."""
  if size == 0:
    raise DataError(f"the {split} split is empty: the corpus holds no text for it")
  if size < seq_len + 1:
    raise DataError(
      f"the {split} split has {size} tokens, fewer than one training window of seq_len + 1 = {seq_len + 1}; "
      "give more text or lower data.seq_len"
    )


def load_corpus(data: ml_collections.ConfigDict) -> Corpus:
  """The token streams of config.data's source, tokenizer and window length, read from prepared shards as
  windows are needed: `data.prepared_dir` for a prepared corpus; for every other source, a cache under
  `data.tfds_dir` that its first use prepares (`prepare.prepare_documents`), keyed by the source's settings
  and files and by the tokenizer."""
  from wavefield_jax.prepare import prepare_documents
  from wavefield_jax.prepared import MANIFEST, load_prepared

  tokenizer = get_tokenizer(data.tokenizer)
  if data.source == "prepared":
    directory = Path(data.prepared_dir).expanduser()
  else:
    key = hashlib.sha256((source_stamp(data) + tokenizer_digest(tokenizer)).encode()).hexdigest()[:16]
    directory = Path(data.tfds_dir).expanduser() / "wavefield_prepared" / f"{data.source}_{key}"
    if not (directory / MANIFEST).exists():
      documents = load_documents(data)
      for split in SPLITS:  # a split without text is named before anything is written
        check_split_size(split, sum(len(d) for d in documents.get(split, [])), 0)
      prepare_documents(documents, directory, tokenizer)
  splits = load_prepared(directory, tokenizer)
  for split, stream in splits.items():
    check_split_size(split, stream.size, data.seq_len)
  return Corpus(tokens=dict(splits), tokenizer=tokenizer, starts=dict(splits))


def train_dataset(
  tokens: np.ndarray,  # or a prepared split
  seq_len: int,
  batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
  starts: np.ndarray | None = None,
) -> grain.MapDataset:
  """Endless batches [batch_size, seq_len + 1] of windows, reshuffled each epoch, one shard per process.

  With the documents' `starts`, each batch is a pair (windows, segment ids), both [batch_size, seq_len + 1]
  (`window_segment_ids`). Its iterator's `get_state()` / `set_state()` is the data position saved with
  each checkpoint.
  """
  num_windows = (tokens.size - 1) // seq_len
  if num_windows // shard_count < 1:
    raise DataError(
      f"{tokens.size} training tokens make {num_windows} windows of {seq_len}: fewer than the {shard_count} shards"
    )
  windows = grain.MapDataset.range(num_windows)[shard_index::shard_count].shuffle(seed=seed).repeat()
  if starts is None:
    windows = windows.map(lambda i: tokens[i * seq_len : i * seq_len + seq_len + 1])
  elif not isinstance(starts, np.ndarray):  # a prepared split: tokens and ids from one read of its records
    windows = windows.map(lambda i: starts.window(i * seq_len, seq_len + 1))
  else:
    windows = windows.map(
      lambda i: (
        tokens[i * seq_len : i * seq_len + seq_len + 1],
        window_segment_ids(starts, np.asarray([i * seq_len]), seq_len + 1)[0],
      )
    )
  return windows.batch(batch_size, drop_remainder=True)


def eval_windows(
  tokens: np.ndarray, seq_len: int, max_windows: int | None = None, starts: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
  """Windows covering the stream from its start, each target scored once.

  Consecutive windows of seq_len + 1 tokens with stride seq_len; where the stream does not fill the
  last one, that window is aligned to the end of the stream and only its new targets get weight.

  Returns:
    windows [N, seq_len + 1] int32 and weights [N, seq_len] float32 (1 for a scored target), then, given
    the documents' `starts`, the windows' segment ids [N, seq_len + 1].
  """
  if tokens.size < 2:
    raise DataError(f"cannot score {tokens.size} token(s): at least 2 are needed (one to predict from)")
  targets = tokens.size - 1
  if targets < seq_len:  # shorter than one window: pad and score what is there
    window = np.pad(tokens, (0, seq_len + 1 - tokens.size))[None]
    scored = (window.astype(np.int32), (np.arange(seq_len) < targets).astype(np.float32)[None])
    return scored if starts is None else (*scored, window_segment_ids(starts, np.zeros(1, int), seq_len + 1))
  count = targets // seq_len
  firsts = list(range(0, count * seq_len, seq_len))  # each window's first position
  weights = [np.ones(seq_len, np.float32)] * count
  if targets % seq_len:
    firsts.append(targets - seq_len)
    weights.append((np.arange(seq_len) >= seq_len - targets % seq_len).astype(np.float32))
  if max_windows is not None:
    firsts, weights = firsts[:max_windows], weights[:max_windows]
  index = np.asarray(firsts)[:, None] + np.arange(seq_len + 1)[None, :]
  scored = (tokens[index].astype(np.int32), np.stack(weights))
  return scored if starts is None else (*scored, window_segment_ids(starts, np.asarray(firsts), seq_len + 1))
