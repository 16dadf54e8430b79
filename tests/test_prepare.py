"""wavefield-prepare: shards equal to the in-memory tokenization, resumable, split by document, read by random
access with document ids; each bad input is one line and exit status 2, nothing written over."""

import collections
import json
import subprocess
import sys

import helpers
import numpy as np
import pytest

from wavefield_jax import input_pipeline, prepare, prepared, tokenizers
from wavefield_jax.errors import DataError

WORDS = ["wave", "field", "damped", "the", "of", "speed", "phase", "token", "\u00e9t\u00e9", "\n"]


def random_documents(rng, count: int) -> list[str]:
  return ["".join(rng.choice(WORDS, rng.integers(1, 400))) for _ in range(count)]


def write_jsonl(path, documents, key="text"):
  path.write_text("".join(json.dumps({key: d}) + "\n" for d in documents))
  return path


def in_memory(documents, tokenizer, seed=0, fractions=(0.9, 0.05, 0.05)) -> input_pipeline.Corpus:
  """The reference: the same documents split by the same hash, each one's tokens then the separator, and
  each document starting at the separator before it (the first at 0)."""
  tokens, starts = {}, {}
  for split in prepared.SPLITS:
    encoded = [
      [*tokenizer.encode(d.encode()), *tokenizer.separator]
      for d in documents
      if prepare.split_of(d.encode(), seed, fractions) == split
    ]
    tokens[split] = np.asarray([t for e in encoded for t in e], np.int32)
    lengths = np.asarray([len(e) for e in encoded], np.int64)
    starts[split] = np.concatenate([[0], np.cumsum(lengths)[:-1] - len(tokenizer.separator)])[: len(lengths)]
  return input_pipeline.Corpus(tokens=tokens, tokenizer=tokenizer, starts=starts)


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_prepared_shards_read_back_as_the_in_memory_streams_with_their_documents(rng, tmp_path, name):
  documents = random_documents(rng, 120)
  inputs = [write_jsonl(tmp_path / "a.jsonl", documents[:70]), write_jsonl(tmp_path / "b.jsonl", documents[70:])]
  fractions = (0.6, 0.2, 0.2)  # every split holds documents (all but certainly)
  manifest = prepare.prepare([str(p) for p in inputs], tmp_path / "out", name, workers=1, fractions=fractions)
  tokenizer = tokenizers.get_tokenizer(name)
  want = in_memory(documents, tokenizer, fractions=fractions)
  splits = prepared.load_prepared(tmp_path / "out", tokenizer)
  for split in prepared.SPLITS:
    stream = want.tokens[split]
    assert manifest["splits"][split]["tokens"] == stream.size == splits[split].size
    assert manifest["splits"][split]["documents"] == len(want.starts[split])
    assert np.array_equal(splits[split][:], stream)
    first = rng.integers(0, stream.size - 70, 40)
    index = first[:, None] + np.arange(70)
    assert np.array_equal(splits[split][index], stream[index])  # random access, across records and shards
    got_ids = input_pipeline.window_segment_ids(splits[split], first, 70)
    want_ids = input_pipeline.window_segment_ids(want.starts[split], first, 70)
    assert np.array_equal(np.diff(got_ids) != 0, np.diff(want_ids) != 0)
    # Training batches with their ids, which a prepared split reads together: as from the in-memory stream.
    got, expected = (
      input_pipeline.train_dataset(tokens, 70, 4, seed=3, starts=starts)[2]
      for tokens, starts in ((splits[split], splits[split]), (stream, want.starts[split]))
    )
    assert np.array_equal(got[0], expected[0]) and np.array_equal(np.diff(got[1]) != 0, np.diff(expected[1]) != 0)


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_a_text_file_is_tokenized_in_pieces_as_it_would_be_whole(rng, tmp_path, monkeypatch, name):
  monkeypatch.setattr(prepare, "PIECE_BYTES", 97)  # the file is read in dozens of pieces
  text = "".join(random_documents(rng, 6))
  (tmp_path / "a.txt").write_text(text)
  tokenizer = tokenizers.get_tokenizer(name)
  pieces = list(prepare.TextFile(tmp_path / "a.txt").pieces(tokenizer))
  assert len(pieces) > 5 and b"".join(pieces) == text.encode()
  (tmp_path / "one_line.txt").write_text(text.replace("\n", " "))  # nowhere to cut for GPT-2: one piece
  one_line = list(prepare.TextFile(tmp_path / "one_line.txt").pieces(tokenizer))
  assert b"".join(one_line) == text.replace("\n", " ").encode() and (len(one_line) == 1) == (name == "gpt2")
  fractions = (0.5, 0.3, 0.2)
  manifest = prepare.prepare([str(tmp_path / "a.txt")], tmp_path / "out", name, fractions=fractions)
  split = prepare.split_of(text.encode(), 0, fractions)  # the split of the whole text, hashed at once
  assert manifest["splits"][split]["documents"] == 1 and manifest["bytes_in"] == len(text.encode())
  got = prepared.load_prepared(tmp_path / "out", tokenizer)[split][:]
  assert np.array_equal(got, [*tokenizer.encode(text), *tokenizer.separator])


def test_gpt2_cuts_leave_the_tokens_of_the_whole_text(rng):
  # Adversarial text: runs of ASCII and non-ASCII whitespace, contractions, digits and accents around newlines.
  gpt2 = tokenizers.get_tokenizer("gpt2")
  alphabet = ["\n", "\n\n", " ", "  ", "\u00a0", "\u2028", "\t", "'s", "'", "a", "Wave", "7", "\u00e9", ".", "x\n"]
  cuts = 0
  for _ in range(300):
    data = "".join(rng.choice(alphabet, rng.integers(2, 40))).encode()
    cut = gpt2.cut(data[: rng.integers(1, len(data) + 1)])
    if cut:
      cuts += 1
      assert [*gpt2.encode(data[:cut]), *gpt2.encode(data[cut:])] == list(gpt2.encode(data)), data
  assert cuts > 20  # about 60 of the 300 prefixes hold a place to cut
  assert gpt2.cut(b"no newline at all") == 0 and gpt2.cut(b"a \nb") == 0 and gpt2.cut(b"a\nb") == 2


def test_records_split_documents_across_blocks(rng, tmp_path, monkeypatch):
  # Blocks of 64 tokens: documents of up to 400 bytes span several records; reading still agrees.
  monkeypatch.setattr(prepare, "BLOCK_TOKENS", 64)
  documents = random_documents(rng, 30)
  prepare.prepare([str(write_jsonl(tmp_path / "a.jsonl", documents))], tmp_path / "out", "bytes", fractions=(1, 0, 0))
  split = prepared.load_prepared(tmp_path / "out", tokenizers.ByteTokenizer())["train"]
  want = in_memory(documents, tokenizers.ByteTokenizer(), fractions=(1, 0, 0))
  assert split.block == 64 and np.array_equal(split[:], want.tokens["train"])
  first = np.arange(0, split.size - 100, 37)
  got, expected = (input_pipeline.window_segment_ids(s, first, 100) for s in (split, want.starts["train"]))
  assert np.array_equal(np.diff(got) != 0, np.diff(expected) != 0)


def test_a_killed_preparation_resumes_without_losing_or_repeating_a_document(rng, tmp_path, monkeypatch):
  documents = random_documents(rng, 90)
  inputs = [str(write_jsonl(tmp_path / f"{i}.jsonl", documents[30 * i : 30 * i + 30])) for i in range(3)]
  real = prepare.prepare_unit

  def dies_on_the_third(unit, *args):
    if unit.index == 2:
      raise KeyboardInterrupt  # killed while the third input is being written
    return real(unit, *args)

  monkeypatch.setattr(prepare, "prepare_unit", dies_on_the_third)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(inputs, tmp_path / "out", "bytes")
  assert not (tmp_path / "out" / prepared.MANIFEST).exists()
  finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*-0000[01].array_record")}
  assert finished
  monkeypatch.setattr(prepare, "prepare_unit", real)
  prepare.prepare(inputs, tmp_path / "out", "bytes")
  assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*-0000[01].array_record")} == finished
  splits = prepared.load_prepared(tmp_path / "out", tokenizers.ByteTokenizer())
  want = in_memory(documents, tokenizers.ByteTokenizer())
  for split in prepared.SPLITS:
    assert np.array_equal(splits[split][:], want.tokens[split])


def test_splits_depend_on_the_document_and_seed_only(rng, tmp_path):
  documents = random_documents(rng, 200)
  split = [prepare.split_of(d.encode(), 7, (0.8, 0.1, 0.1)) for d in documents]
  assert split == [prepare.split_of(d.encode(), 7, (0.8, 0.1, 0.1)) for d in reversed(documents)][::-1]
  assert split != [prepare.split_of(d.encode(), 8, (0.8, 0.1, 0.1)) for d in documents]
  counts = {s: split.count(s) for s in prepared.SPLITS}
  assert 140 <= counts["train"] <= 180 and counts["validation"] > 5 and counts["test"] > 5
  # Given per split: every document of a file goes where it is told.
  test_file = write_jsonl(tmp_path / "t.jsonl", documents[:5])
  train_file = write_jsonl(tmp_path / "a.jsonl", documents[5:])
  manifest = prepare.prepare([f"test={test_file}", f"train={train_file}"], tmp_path / "out", "bytes")
  assert manifest["splits"]["test"]["documents"] == 5 and manifest["splits"]["validation"]["documents"] == 0
  assert manifest["splits"]["train"]["documents"] == 195


@pytest.mark.slow
def test_parquet_and_text_inputs_and_two_workers(rng, tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  documents = random_documents(rng, 40)
  pq.write_table(pa.table({"body": documents[:30]}), tmp_path / "a.parquet", row_group_size=7)
  (tmp_path / "b.txt").write_text("".join(documents[30:]))  # a text file is one document
  inputs = [str(tmp_path / "a.parquet"), f"test={tmp_path / 'b.txt'}"]
  manifest = prepare.prepare(inputs, tmp_path / "out", "gpt2", workers=2, column="body", fractions=(1, 0, 0))
  splits = prepared.load_prepared(tmp_path / "out", tokenizers.get_tokenizer("gpt2"))
  gpt2 = tokenizers.get_tokenizer("gpt2")
  separator = list(gpt2.separator)
  want = {
    "train": np.asarray([t for d in documents[:30] for t in [*gpt2.encode(d), *separator]]),
    "test": np.asarray([*gpt2.encode("".join(documents[30:])), *separator]),
  }
  assert manifest["splits"]["test"]["documents"] == 1
  assert np.array_equal(splits["train"][:], want["train"]) and np.array_equal(splits["test"][:], want["test"])


def test_a_hugging_face_tokenizer_file(rng, tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers

  # A word-level tokenizer.json written here: the test needs no download.
  vocab = {w: i for i, w in enumerate(["[UNK]", "</s>", *sorted(set(" ".join(WORDS).split()))])}
  made = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  made.pre_tokenizer = pre_tokenizers.Whitespace()
  made.save(str(tmp_path / "tokenizer.json"))
  tokenizer = tokenizers.get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
  assert tokenizer.vocab_size == len(vocab) and tokenizer.separator == (vocab["</s>"],)
  assert tokenizer.token_bytes[vocab["damped"]] == len("damped")
  assert list(tokenizer.encode("the wave damped")) == [vocab["the"], vocab["wave"], vocab["damped"]]
  (tmp_path / "bad.json").write_text("{not a tokenizer")
  with pytest.raises(ValueError, match="is not a readable tokenizer.json"):
    tokenizers.get_tokenizer(f"hf:{tmp_path / 'bad.json'}")


def run_prepare(*args):
  return subprocess.run(
    [sys.executable, "-m", "wavefield_jax.prepare", *map(str, args)], capture_output=True, text=True, timeout=300
  )


def prepare_in_process(capsys, *args) -> tuple[int, str]:
  """The command's exit status and the lines it wrote to stderr other than the progress bar, run here."""
  with pytest.raises(SystemExit) as exit_info:
    prepare.main([*map(str, args)])
    raise SystemExit(0)
  lines = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("prepare:")]
  return exit_info.value.code, lines


@pytest.mark.slow
def test_bad_inputs_are_one_line_and_status_2(rng, tmp_path, capsys):
  import pyarrow as pa
  import pyarrow.parquet as pq

  good = write_jsonl(tmp_path / "good.jsonl", random_documents(rng, 20))
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
  write_jsonl(tmp_path / "other_key.jsonl", ["a", "b"], key="body")
  (tmp_path / "bad.json").write_text("{not a tokenizer")
  pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "no_text.parquet")
  cases = [
    ([tmp_path / "no_text.parquet"], "bytes", "no_text.parquet has no column 'text' (set it with --column)"),
    ([tmp_path / "empty.txt"], "bytes", "empty.txt is empty"),
    ([tmp_path / "broken.jsonl"], "bytes", "broken.jsonl:2: not a JSON line"),
    ([tmp_path / "other_key.jsonl"], "bytes", "other_key.jsonl:1: no 'text' key"),
    ([good], f"hf:{tmp_path / 'bad.json'}", "is not a readable tokenizer.json"),
    ([tmp_path / "missing.jsonl"], "bytes", "missing.jsonl is not a file"),
  ]
  for case, (inputs, tokenizer, message) in enumerate(cases):
    output = tmp_path / f"out_bad{case}"
    status, lines = prepare_in_process(capsys, *inputs, "--output", output, "--tokenizer", tokenizer, "--workers", 1)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("wavefield-prepare: ") and message in lines[0]
    assert not (output / prepared.MANIFEST).exists()

  done = run_prepare(good, "--output", tmp_path / "out", "--tokenizer", "bytes", "--workers", "1")  # the command
  assert done.returncode == 0 and "train:" in done.stdout, done.stderr[-2000:]
  before = helpers.file_digests(tmp_path / "out")
  # Other inputs into a prepared directory: refused, nothing written over.
  status, lines = prepare_in_process(capsys, good, good, "--output", tmp_path / "out", "--tokenizer", "bytes")
  assert status == 2 and "holds a preparation with other inputs" in lines[0]
  assert helpers.file_digests(tmp_path / "out") == before

  with pytest.raises(DataError, match="prepared with the tokenizer 'bytes', not the config's 'gpt2'"):
    prepared.load_prepared(tmp_path / "out", tokenizers.get_tokenizer("gpt2"))
  shard = next((tmp_path / "out").glob("train-*.array_record"))
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(DataError, match="was changed on disk"):
    prepared.load_prepared(tmp_path / "out", tokenizers.ByteTokenizer())
  shard.write_bytes(bytes(data[:-10]))
  with pytest.raises(DataError, match="is truncated or missing"):
    prepared.load_prepared(tmp_path / "out", tokenizers.ByteTokenizer())


@pytest.mark.slow
def test_the_ray_engine_writes_what_the_process_pool_writes(rng, tmp_path, capsys, monkeypatch):
  documents = random_documents(rng, 90)
  inputs = [str(write_jsonl(tmp_path / f"{i}.jsonl", documents[30 * i : 30 * i + 30])) for i in range(3)]
  in_processes = prepare.prepare(inputs, tmp_path / "processes", "gpt2", workers=2)

  def not_here(todo, workers):
    raise AssertionError("the ray engine ran its units in the process pool")

  monkeypatch.setitem(prepare.ENGINES, "processes", not_here)
  # The command on a local Ray instance of its own: the same shards, byte for byte, and the same manifest.
  status, lines = prepare_in_process(
    capsys, *inputs, "--output", tmp_path / "ray", "--tokenizer", "gpt2", "--engine", "ray"
  )
  assert status == 0 and not lines, lines
  assert json.loads((tmp_path / "ray" / prepared.MANIFEST).read_text()) == in_processes
  shards = sorted(p.name for p in (tmp_path / "processes").glob("*.array_record"))
  assert shards and shards == sorted(p.name for p in (tmp_path / "ray").glob("*.array_record"))
  for name in shards:
    assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "processes" / name).read_bytes()
  # A bad input in a Ray task is the worker's own one-line error, exit status 2, and no manifest.
  (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
  bad = [inputs[0], tmp_path / "broken.jsonl", "--output", tmp_path / "bad", "--tokenizer", "bytes", "--engine", "ray"]
  status, lines = prepare_in_process(capsys, *bad)
  assert status == 2 and len(lines) == 1 and lines[0].endswith("broken.jsonl:2: not a JSON line (Expecting value)")
  assert not (tmp_path / "bad" / prepared.MANIFEST).exists()


def test_bytes_that_are_not_utf8_are_replaced_and_counted(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"caf\xe9 au lait " * 20)  # Latin-1, not UTF-8
  manifest = prepare.prepare([f"train={tmp_path / 'a.txt'}"], tmp_path / "out", "gpt2")
  assert manifest["replaced_documents"] == 1
  text = tokenizers.get_tokenizer("gpt2").decode(
    prepared.load_prepared(tmp_path / "out", tokenizers.get_tokenizer("gpt2"))["train"][:8]
  )
  assert "\ufffd" in text


def test_two_processes_read_disjoint_halves_of_each_epoch(rng, tmp_path):
  documents = random_documents(rng, 60)
  prepare.prepare([str(write_jsonl(tmp_path / "a.jsonl", documents))], tmp_path / "out", "bytes", fractions=(1, 0, 0))
  split = prepared.load_prepared(tmp_path / "out", tokenizers.ByteTokenizer())["train"]
  seq_len, windows = 32, (split.size - 1) // 32
  read = collections.Counter()  # by content, counted: random words can repeat a window elsewhere
  for shard in range(2):
    dataset = input_pipeline.train_dataset(split, seq_len, 1, seed=5, shard_index=shard, shard_count=2)
    batches = iter(dataset)
    read.update(next(batches)[0].tobytes() for _ in range(len(range(shard, windows, 2))))
  every = collections.Counter(split[i * seq_len : i * seq_len + seq_len + 1].tobytes() for i in range(windows))
  assert read == every  # each window once: one read by both halves would leave another unread


@pytest.mark.slow
def test_training_reads_a_prepared_corpus_with_documents_apart(rng, tmp_path):
  documents = random_documents(rng, 80)
  prepare.prepare(
    [str(write_jsonl(tmp_path / "a.jsonl", documents))], tmp_path / "data", "bytes", fractions=(0.6, 0.2, 0.2)
  )
  config = helpers.tiny_config(steps=4, eval_every=2)
  config.data.update(source="prepared", prepared_dir=str(tmp_path / "data"), document_mask=True)
  from wavefield_jax.train_lib import train_and_evaluate

  result = train_and_evaluate(config, tmp_path / "run")
  assert result["step"] == 4 and np.isfinite(result["loss"]) and result["tokens"] > 0


def test_every_source_is_read_through_a_prepared_cache_made_on_first_use(rng, tmp_path):
  from wavefield_jax.config import base_config
  from wavefield_jax.sources import shakespeare_documents

  data = base_config().data
  data.tfds_dir = str(tmp_path / "tfds")
  corpus = input_pipeline.load_corpus(data)
  want = input_pipeline.tokenize(shakespeare_documents(), tokenizers.ByteTokenizer(), data.seq_len)
  for split in prepared.SPLITS:
    assert isinstance(corpus.tokens[split], prepared.PreparedSplit)
    assert np.array_equal(corpus.tokens[split][:], want.tokens[split])
    first = rng.integers(0, want.tokens[split].size - 300, 20)
    got, expected = (
      input_pipeline.window_segment_ids(s, first, 300) for s in (corpus.starts[split], want.starts[split])
    )
    assert np.array_equal(np.diff(got) != 0, np.diff(expected) != 0)
  (cache,) = (tmp_path / "tfds" / "wavefield_prepared").iterdir()
  written = helpers.file_digests(cache)
  input_pipeline.load_corpus(data)  # read again, nothing rewritten
  assert helpers.file_digests(cache) == written

  # local files: a changed file is a new cache, not a stale read.
  book = tmp_path / "book.txt"
  book.write_text("".join(f"line {i} {rng.bytes(6).hex()}\n" for i in range(400)))
  data.source, data.files = "local_text", {"train": str(book)}
  first_read = input_pipeline.load_corpus(data).tokens["train"][:]
  book.write_text("".join(f"other {i} {rng.bytes(6).hex()}\n" for i in range(400)))
  assert not np.array_equal(input_pipeline.load_corpus(data).tokens["train"][:], first_read)
  assert len(list((tmp_path / "tfds" / "wavefield_prepared").iterdir())) == 3
