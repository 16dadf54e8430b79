"""Tokenize a corpus once into ArrayRecord shards that training streams by random access.

  wavefield-prepare INPUT... --output DIR --tokenizer NAME [--workers N] [--text-key KEY] [--column NAME]
      [--split-fractions 0.9,0.05,0.05] [--seed S]

An INPUT is a text file (one document, streamed in pieces: `TextFile`), a JSONL file (one document per
line, its `--text-key`), a Parquet file (one document per row of `--column`), or `tfds:NAME[:SPLIT]` (a
prepared TFDS dataset, its `--text-key` feature); `SPLIT=INPUT` puts all its documents in that split.
Other documents go to a split chosen by a hash of their text and the seed, so a document's split depends on
nothing else.

Each input is one unit of work: a worker process streams its documents, tokenizes them and writes one
shard per split, `{split}-{unit}.array_record`, under a temporary name renamed when complete, then the
unit's record `{unit}.json`. A rerun skips the units that have one, so a killed run loses at most the
units in flight and writes no document twice. `manifest.json` is written last:

  {"tokenizer": ..., "tokenizer_sha256": ..., "block_tokens": 4096, "dtype": "uint16", "separator": [...],
   "splits": {"train": {"tokens": N, "documents": M, "shards": [{"file", "tokens", "documents", "bytes",
   "sha256"}, ...]}, "validation": ..., "test": ...}}

A record holds up to `block_tokens` tokens of the split's stream and where documents begin in it
(`prepared.encode_block`, read back by `prepared.load_prepared`); a document is its tokens followed by the
tokenizer's separator.

`--engine` picks who runs the units: `processes` (a pool of `--workers` on this machine) or `ray`, one Ray
task per unit on the cluster at `RAY_ADDRESS` (every node must see the inputs and `--output`, as on a shared
filesystem) or, without it, on a local Ray instance of `--workers` CPUs. Both run `prepare_unit` and write
the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavefield_jax.errors import DataError
from wavefield_jax.files import file_sha256, write_text_atomic
from wavefield_jax.prepared import MANIFEST, SPLITS, encode_block
from wavefield_jax.tokenizers import Tokenizer, get_tokenizer, tokenizer_digest

BLOCK_TOKENS = 4096  # tokens per record: a training window reads one or two
PIECE_BYTES = 1 << 26  # a text file is read and tokenized in pieces of about this many bytes


@dataclasses.dataclass(frozen=True)
class Unit:
  """One input: where its documents come from and how they are read."""

  index: int
  source: str  # a path, or tfds:NAME[:SPLIT]
  split: str | None  # None: each document's split by its hash
  text_key: str
  column: str


@dataclasses.dataclass(frozen=True)
class TextFile:
  """A text file: one document, never held whole. It is read once to hash it for its split and once in
  pieces to tokenize it, each piece ending where the tokenizer can `cut` (a tokenizer with no such place
  reads it whole)."""

  path: Path

  def chunks(self) -> Iterator[bytes]:
    opener = gzip.open if self.path.suffix == ".gz" else open
    with opener(self.path, "rb") as f:
      while chunk := f.read(PIECE_BYTES):
        yield chunk

  def pieces(self, tokenizer: Tokenizer) -> Iterator[bytes]:
    # Each chunk is searched once, with the two bytes before it (all a cut rule looks back); the chunks
    # since the last cut are joined once, so a file with no place to cut is not copied over and over.
    pending, tail = [], b""
    for chunk in self.chunks():
      if cut := tokenizer.cut(tail + chunk):
        at = cut - len(tail)
        yield b"".join([*pending, chunk[:at]])
        pending = [chunk[at:]]
      else:
        pending.append(chunk)
      tail = (tail + chunk)[-2:]
    if rest := b"".join(pending):
      yield rest


def split_of(text: bytes | Iterable[bytes], seed: int, fractions: tuple[float, ...]) -> str:
  """The split of a document (its bytes, or its chunks in order): where sha256(seed, text) falls among the
  cumulative fractions."""
  digest = hashlib.sha256(seed.to_bytes(8, "little"))
  for chunk in [text] if isinstance(text, bytes) else text:
    digest.update(chunk)
  point = int.from_bytes(digest.digest()[:8], "little") / 2**64
  return SPLITS[min(int(np.searchsorted(np.cumsum(fractions), point, side="right")), len(SPLITS) - 1)]


def read_documents(unit: Unit) -> Iterator[bytes | TextFile]:
  """The documents of one input, streamed; a malformed one is a DataError naming the file and line."""
  if unit.source.startswith("tfds:"):
    import tensorflow_datasets as tfds

    name, _, split = unit.source[5:].partition(":")
    source = tfds.data_source(name, split=split or "train")
    for i in range(len(source)):
      yield _as_bytes(source[i][unit.text_key])
    return
  path = Path(unit.source)
  if path.stat().st_size == 0:
    raise DataError(f"{path} is empty")
  name = path.name.removesuffix(".gz")
  opener = gzip.open if path.suffix == ".gz" else open
  if name.endswith(".jsonl") or name.endswith(".json"):
    with opener(path, "rb") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          text = json.loads(line)[unit.text_key]
        except json.JSONDecodeError as error:
          raise DataError(f"{path}:{number}: not a JSON line ({error.msg})") from error
        except (KeyError, TypeError) as error:
          raise DataError(f"{path}:{number}: no {unit.text_key!r} key (set it with --text-key)") from error
        yield _as_bytes(text)
  elif name.endswith(".parquet"):
    import pyarrow.parquet as pq  # the parquet extra

    table = pq.ParquetFile(path)
    if unit.column not in table.schema_arrow.names:
      raise DataError(f"{path} has no column {unit.column!r} (set it with --column); it has {table.schema_arrow.names}")
    for batch in table.iter_batches(columns=[unit.column], batch_size=1024):
      yield from (_as_bytes(text) for text in batch.column(0).to_pylist())
  else:
    yield TextFile(path)


def _as_bytes(text) -> bytes:
  return text if isinstance(text, bytes) else str(text).encode("utf-8")


class ShardWriter:
  """One split's shard of a unit: tokens in records of BLOCK_TOKENS, written under a temporary name."""

  def __init__(self, path: Path, dtype: np.dtype):
    from array_record.python.array_record_module import ArrayRecordWriter

    self.path, self.dtype = path, dtype
    self.temporary = path.with_name(f"{path.name}.{os.getpid()}.partial")
    self.writer = ArrayRecordWriter(str(self.temporary), "group_size:1")
    self.pending: list[np.ndarray] = []
    self.pending_tokens, self.begins = 0, []
    self.tokens = self.documents = 0

  def add(self, tokens: np.ndarray, begins_document: bool = True) -> None:
    """Appends a document's first tokens, or with `begins_document=False` more of the last one."""
    if begins_document:
      self.begins.append(self.pending_tokens)
      self.documents += 1
    while len(tokens):
      take = tokens[: BLOCK_TOKENS - self.pending_tokens]
      self.pending.append(take)
      self.pending_tokens += len(take)
      tokens = tokens[len(take) :]
      if self.pending_tokens == BLOCK_TOKENS:
        self._flush()

  def _flush(self) -> None:
    if self.pending_tokens:
      self.writer.write(encode_block(np.concatenate(self.pending), self.begins, self.dtype))
      self.tokens += self.pending_tokens
    self.pending, self.pending_tokens, self.begins = [], 0, []

  def close(self) -> dict | None:
    """Renames the complete shard into place; its entry in the manifest (None if it holds nothing)."""
    self._flush()
    self.writer.close()
    if not self.documents:
      self.temporary.unlink()
      return None
    digest = file_sha256(self.temporary)
    os.replace(self.temporary, self.path)
    return {
      "file": self.path.name,
      "tokens": self.tokens,
      "documents": self.documents,
      "bytes": self.path.stat().st_size,
      "sha256": digest,
    }


def prepare_unit(unit: Unit, output: Path, tokenizer_name: str, fractions: tuple[float, ...], seed: int) -> dict:
  """Tokenizes one input into one shard per split and records it in `{unit}.json`; returns that record.

  Returns:
    {"unit": index, "source": ..., "shards": {split: shard entry}, "bytes_in": N, "replaced": M}, where
    `replaced` counts the documents whose bytes were not UTF-8 (decoded with U+FFFD in their place).
  """
  documents = ((unit.split, text) for text in read_documents(unit))
  return write_unit(unit.index, unit.source, documents, output, get_tokenizer(tokenizer_name), fractions, seed)


def write_unit(
  index: int,
  source: str,
  documents: Iterable[tuple[str | None, bytes | TextFile]],
  output: Path,
  tokenizer: Tokenizer,
  fractions: tuple[float, ...],
  seed: int,
) -> dict:
  """Writes (split or None, document) pairs as the shards of unit `index` and its record (`prepare_unit`);
  an empty document is skipped."""
  dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
  separator = np.asarray(tokenizer.separator, np.int32)
  writers = {split: ShardWriter(output / f"{split}-{index:05d}.array_record", dtype) for split in SPLITS}
  bytes_in = replaced = 0
  for split, document in documents:
    whole = isinstance(document, bytes)
    split = split or split_of(document if whole else document.chunks(), seed, fractions)
    written = not_utf8 = False
    for piece in [document] if whole else document.pieces(tokenizer):
      bytes_in += len(piece)
      if not piece:
        continue
      decoded = piece
      if tokenizer.name != "bytes":  # decoded once here, so the tokenizer does not decode again
        try:
          decoded = piece.decode("utf-8")
        except UnicodeDecodeError:
          decoded, not_utf8 = piece.decode("utf-8", errors="replace"), True
      writers[split].add(tokenizer.encode(decoded), begins_document=not written)
      written = True
    if written:
      writers[split].add(separator, begins_document=False)
    replaced += not_utf8
  shards = {split: entry for split, writer in writers.items() if (entry := writer.close()) is not None}
  record = {"unit": index, "source": source, "shards": shards, "bytes_in": bytes_in, "replaced": replaced}
  write_text_atomic(output / f"{index:05d}.json", json.dumps(record))
  return record


def prepare_documents(documents: dict[str, list[bytes]], output: Path, tokenizer: Tokenizer) -> dict:
  """A source's documents, already split, written as a prepared corpus of one unit; returns the manifest.

  The in-memory sources (the shipped corpus, local files, WikiText-103, TFDS) are prepared this way into a
  cache on first use, so every run reads its windows through `PreparedSplit`."""
  output.mkdir(parents=True, exist_ok=True)
  pairs = ((split, text) for split in SPLITS for text in documents.get(split, []))
  record = write_unit(0, "documents", pairs, output, tokenizer, (1.0, 0.0, 0.0), 0)
  return _write_manifest(output, tokenizer, [record])


def _run_unit(arguments) -> dict:
  return prepare_unit(*arguments)


def parse_inputs(inputs: list[str], text_key: str, column: str) -> list[Unit]:
  """Units of the command's INPUT arguments, in order; a missing file is a DataError."""
  units = []
  for index, given in enumerate(inputs):
    split, _, source = given.partition("=") if given.partition("=")[0] in SPLITS else (None, "", given)
    if not source.startswith("tfds:") and not Path(source).is_file():
      raise DataError(f"input {source} is not a file")
    source = source if source.startswith("tfds:") else str(Path(source).resolve())
    units.append(Unit(index, source, split, text_key, column))
  return units


def prepare(
  inputs: list[str],
  output: str | Path,
  tokenizer_name: str,
  *,
  workers: int = 1,
  text_key: str = "text",
  column: str = "text",
  fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
  seed: int = 0,
  engine: str = "processes",
) -> dict:
  """Prepares `inputs` into `output` (resuming a killed run there) with `engine` (`ENGINES`); returns the
  manifest."""
  if engine not in ENGINES:
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"split fractions must be three numbers >= 0 that sum to 1; got {fractions}")
  tokenizer = get_tokenizer(tokenizer_name)  # a bad name or tokenizer file fails here, before any work
  units = parse_inputs(inputs, text_key, column)
  output = Path(output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  settings = {"inputs": [dataclasses.asdict(u) for u in units], "tokenizer": tokenizer_name, "seed": seed}
  settings |= {"fractions": list(fractions), "tokenizer_sha256": tokenizer_digest(tokenizer)}
  settings_path = output / "settings.json"
  if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
    raise DataError(f"{output} holds a preparation with other inputs or settings; give an empty --output")
  settings_path.write_text(json.dumps(settings, indent=1))
  for stale in output.glob("*.partial"):  # what a killed run left half written
    stale.unlink()
  done = {u.index: json.loads((output / f"{u.index:05d}.json").read_text()) for u in units if _finished(output, u)}
  todo = [(u, output, tokenizer_name, fractions, seed) for u in units if u.index not in done]
  with tqdm(total=len(units), initial=len(done), desc="prepare", unit="input", dynamic_ncols=True) as bar:
    for record in ENGINES[engine](todo, workers):
      done[record["unit"]] = record
      bar.update(1)
  return _write_manifest(output, tokenizer, [done[u.index] for u in units])


def _in_processes(todo: list[tuple], workers: int) -> Iterator[dict]:
  """The units' records as they finish, from a pool of `workers` processes (in this one for a single unit)."""
  if workers > 1 and len(todo) > 1:
    with multiprocessing.get_context("spawn").Pool(min(workers, len(todo))) as pool:
      yield from pool.imap_unordered(_run_unit, todo)
  else:
    yield from map(_run_unit, todo)


def _on_ray(todo: list[tuple], workers: int) -> Iterator[dict]:
  """The units' records as they finish, one Ray task each: on the running Ray instance if there is one, else
  on the cluster at RAY_ADDRESS, else on a local instance of `workers` CPUs (shut down at the end).

  A task lost with its node is rerun by Ray; a unit's files are renamed into place only when complete, so a
  rerun writes the same bytes. A unit's own error (a bad input) is raised here as the worker raised it."""
  try:
    import ray
  except ImportError as error:
    raise DataError("--engine ray needs Ray: pip install 'wavefield-jax[ray]'") from error
  started = not ray.is_initialized()
  if started:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    address = os.environ.get("RAY_ADDRESS")
    cpus = None if address else workers
    ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
  task = ray.remote(num_cpus=1)(_run_unit)
  pending = [task.remote(arguments) for arguments in todo]
  try:
    while pending:
      finished, pending = ray.wait(pending)
      try:
        yield ray.get(finished[0])
      except ray.exceptions.RayTaskError as error:
        raise (error.cause if isinstance(error.cause, DataError) else error) from None
  finally:
    for reference in pending:
      ray.cancel(reference)
    if started:
      ray.shutdown()


ENGINES = {"processes": _in_processes, "ray": _on_ray}


def _finished(output: Path, unit: Unit) -> bool:
  """A unit is finished when its record exists and every shard it names is in place."""
  path = output / f"{unit.index:05d}.json"
  if not path.exists():
    return False
  shards = json.loads(path.read_text())["shards"].values()
  return all((output / shard["file"]).exists() for shard in shards)


def _write_manifest(output: Path, tokenizer, records: list[dict]) -> dict:
  splits = {}
  for split in SPLITS:
    shards = [record["shards"][split] for record in records if split in record["shards"]]
    splits[split] = {
      "tokens": sum(s["tokens"] for s in shards),
      "documents": sum(s["documents"] for s in shards),
      "shards": shards,
    }
  manifest = {
    "tokenizer": tokenizer.name,
    "tokenizer_sha256": tokenizer_digest(tokenizer),
    "block_tokens": BLOCK_TOKENS,
    "dtype": "uint16" if tokenizer.vocab_size <= 2**16 else "uint32",
    "separator": list(tokenizer.separator),
    "bytes_in": sum(r["bytes_in"] for r in records),
    "replaced_documents": sum(r["replaced"] for r in records),
    "splits": splits,
  }
  write_text_atomic(output / MANIFEST, json.dumps(manifest, indent=1))
  return manifest


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="wavefield-prepare", description=__doc__.split("\n")[0])
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="text, .jsonl, .parquet or tfds:NAME; SPLIT=INPUT")
  parser.add_argument("--output", required=True, help="the directory of shards and manifest.json")
  parser.add_argument("--tokenizer", required=True, help="bytes, gpt2 or hf:PATH/tokenizer.json")
  parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (local CPUs)")
  parser.add_argument("--engine", choices=list(ENGINES), default="processes", help="ray: one task per input")
  parser.add_argument("--text-key", default="text", help="the text's key in JSONL lines and TFDS features")
  parser.add_argument("--column", default="text", help="the text's column in Parquet files")
  parser.add_argument("--split-fractions", default="0.9,0.05,0.05", help="train,validation,test")
  parser.add_argument("--seed", type=int, default=0, help="the hash seed that splits documents")
  args = parser.parse_args(argv)
  try:
    fractions = tuple(float(f) for f in args.split_fractions.split(","))
    manifest = prepare(
      args.inputs,
      args.output,
      args.tokenizer,
      workers=args.workers,
      text_key=args.text_key,
      column=args.column,
      fractions=fractions,
      seed=args.seed,
      engine=args.engine,
    )
  except (DataError, ValueError) as error:
    print(f"wavefield-prepare: {error}", file=sys.stderr)
    sys.exit(2)
  for split, entry in manifest["splits"].items():
    print(f"{split}: {entry['tokens']:,} tokens, {entry['documents']:,} documents, {len(entry['shards'])} shards")
  if manifest["replaced_documents"]:
    print(f"{manifest['replaced_documents']} documents were not UTF-8: their bad bytes became U+FFFD")


if __name__ == "__main__":
  main()
