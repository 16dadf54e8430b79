"""A prepared corpus on disk (what `wavefield-prepare` writes): the record format, the manifest's name, and
reading the splits by random access with their documents' ids.

A record holds up to `block_tokens` tokens of a split's stream and the offsets where documents begin among
them (`encode_block`). `load_prepared` checks the manifest's tokenizer against the run's and each shard's
size and sha256 against the manifest, then gives a `PreparedSplit` per split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavefield_jax.errors import DataError
from wavefield_jax.files import file_sha256
from wavefield_jax.tokenizers import tokenizer_digest

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"


def encode_block(tokens: np.ndarray, begins: list[int], dtype: np.dtype) -> bytes:
  """A record: [token count, begin count] uint32, the tokens, then the offsets where documents begin."""
  header = np.asarray([len(tokens), len(begins)], np.uint32)
  return header.tobytes() + tokens.astype(dtype).tobytes() + np.asarray(begins, np.uint32).tobytes()


def decode_block(record: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, document begins) of a record written by `encode_block`."""
  count, begins = np.frombuffer(record[:8], np.uint32)
  size = np.dtype(dtype).itemsize * int(count)
  tokens = np.frombuffer(record[8 : 8 + size], dtype)
  return tokens, np.frombuffer(record[8 + size : 8 + size + 4 * int(begins)], np.uint32)


class PreparedSplit:
  """One split of a prepared corpus, read by random access: `tokens[a:b]` (or an integer index array) reads
  only the records it needs; `window(first, length)` gives a window's tokens and document ids together.

  Nothing the size of the corpus is held: the shards' token counts, and an open reader over them.
  """

  def __init__(self, directory: Path, manifest: dict, split: str):
    import grain

    entry = manifest["splits"][split]
    self.dtype = np.dtype(manifest["dtype"])
    self.block = manifest["block_tokens"]
    self.separator_length = len(manifest["separator"])
    self.size = entry["tokens"]
    counts = np.asarray([shard["tokens"] for shard in entry["shards"]], np.int64)
    self.shard_starts = np.concatenate([[0], np.cumsum(counts)])  # [S + 1] token offsets
    records = -(-counts // self.block)
    self.record_starts = np.concatenate([[0], np.cumsum(records)])  # [S + 1] record offsets
    paths = [str(directory / shard["file"]) for shard in entry["shards"]]
    self.source = grain.sources.ArrayRecordDataSource(paths) if paths else None

  def __len__(self) -> int:
    return self.size

  def _records(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [start, stop) and the positions in the split where documents begin among them."""
    parts, begins = [], []
    position = start
    while position < stop:
      shard = int(np.searchsorted(self.shard_starts, position, side="right")) - 1
      local = position - self.shard_starts[shard]
      record = self.record_starts[shard] + local // self.block
      tokens, record_begins = decode_block(self.source[int(record)], self.dtype)
      record_start = position - local % self.block  # the split position of the record's first token
      take = tokens[local % self.block : local % self.block + stop - position]
      parts.append(take)
      begins.append(record_start + record_begins.astype(np.int64))
      position += len(take)
    if not parts:  # an empty range (or an empty split)
      return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(parts).astype(np.int32), np.concatenate(begins)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      start, stop, step = key.indices(self.size)
      return self._records(start, stop)[0][::step]
    index = np.asarray(key)
    low, high = int(index.min()), int(index.max()) + 1
    return self._records(low, high)[0][index - low]

  def window(self, first: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The `length` tokens at `first` and their document ids, both [length] int32, from one read: the ids
    change where a document starts, at the separator before its first token (as `input_pipeline.Corpus`
    counts)."""
    # A document whose first token follows the window can still start at its separator inside it.
    tokens, begins = self._records(first, min(first + length + self.separator_length, self.size))
    starts = begins[begins > 0] - self.separator_length
    return tokens[:length], np.searchsorted(starts, first + np.arange(length), side="right").astype(np.int32)

  def segment_ids(self, first: np.ndarray, length: int) -> np.ndarray:
    """[N, length] int32 document ids of the windows at `first` [N] (`window`)."""
    return np.asarray([self.window(int(start), length)[1] for start in np.asarray(first)], np.int32)


def load_prepared(directory: str | Path, tokenizer, verify: bool = True) -> dict[str, PreparedSplit]:
  """The splits of a prepared corpus, checked against the run's tokenizer and (with `verify`) each shard
  against its size and sha256; any mismatch is a DataError naming the file."""
  directory = Path(directory).expanduser()
  path = directory / MANIFEST
  if not path.exists():
    raise DataError(f"{directory} has no {MANIFEST}: prepare it with wavefield-prepare (or let a killed run finish)")
  manifest = json.loads(path.read_text())
  if manifest["tokenizer_sha256"] != tokenizer_digest(tokenizer):
    raise DataError(
      f"{directory} was prepared with the tokenizer {manifest['tokenizer']!r}, not the config's {tokenizer.name!r}"
    )
  shards = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
  for shard in tqdm(shards, desc="verify shards", unit="shard", disable=not verify or len(shards) < 8):
    file = directory / shard["file"]
    if not file.exists() or file.stat().st_size != shard["bytes"]:
      size = file.stat().st_size if file.exists() else "missing"
      raise DataError(f"shard {file} is truncated or missing ({size} bytes, the manifest says {shard['bytes']})")
    if verify and file_sha256(file) != shard["sha256"]:
      raise DataError(f"shard {file} was changed on disk: its sha256 differs from the manifest's")
  return {split: PreparedSplit(directory, manifest, split) for split in SPLITS}
