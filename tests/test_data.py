"""Corpora, tokenizers, splits, the TFDS builders and the grain pipeline."""

import hashlib
import zipfile

import ml_collections
import numpy as np
import pytest

from wavefield_jax import input_pipeline, sources, tfds_builders, tokenizers
from wavefield_jax.config import base_config


def test_shipped_corpus_matches_its_hash_and_splits_are_whole_disjoint_works():
  splits = sources.shakespeare_documents()
  total = b"".join(b"".join(splits[s]) for s in sources.SPLITS)
  assert len(total) == 5_057_198
  assert len(splits["validation"]) == 2 and len(splits["test"]) == 2
  assert splits["test"][0].lstrip().upper().startswith(b"MACBETH") or b"Macbeth" in splits["test"][0][:2000]
  fingerprints = {s: {hashlib.sha1(d).hexdigest() for d in splits[s]} for s in sources.SPLITS}
  assert not fingerprints["train"] & fingerprints["validation"]
  assert not fingerprints["train"] & fingerprints["test"]
  assert not fingerprints["validation"] & fingerprints["test"]
  assert splits == sources.shakespeare_documents()  # deterministic


def test_damaged_corpus_is_refused(tmp_path):
  import lzma

  bad = tmp_path / "corpus.txt.xz"
  bad.write_bytes(lzma.compress(b"not the works of Shakespeare"))
  with pytest.raises(sources.DataError, match="sha256"):
    sources.shakespeare_documents(corpus=bad)
  bad.write_bytes(b"garbage")
  with pytest.raises(sources.DataError, match="not a valid xz"):
    sources.shakespeare_documents(corpus=bad)


def test_byte_tokenizer_round_trips_any_bytes(rng):
  tokenizer = tokenizers.ByteTokenizer()
  raw = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes() + b"\xff\xfe invalid utf-8 \xc3"
  tokens = tokenizer.encode(raw)
  assert tokens.dtype == np.int32 and tokens.max() < 256 and len(tokens) == len(raw)
  assert bytes(tokens.astype(np.uint8).tolist()) == raw
  text = "Wherefore art thou, Ρωμαῖος? 🌊"
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_gpt2_tokenizer_round_trips_and_counts_bytes():
  tokenizer = tokenizers.GPT2Tokenizer()
  assert tokenizer.vocab_size == 50257
  text = "To be, or not to be: that is the question.\n  Ωμέγα and 🌊 waves"
  tokens = tokenizer.encode(text)
  assert tokenizer.decode(tokens) == text
  assert tokenizer.encode("Hello world").tolist() == [15496, 995]  # the published GPT-2 ids
  assert tokenizer.token_bytes[tokens].sum() == len(text.encode("utf-8"))


def test_too_little_text_gives_clear_errors():
  tokenizer = tokenizers.ByteTokenizer()
  with pytest.raises(sources.DataError, match="validation split is empty"):
    input_pipeline.tokenize({"train": [b"x" * 100], "validation": [], "test": [b"y" * 100]}, tokenizer, 16)
  with pytest.raises(sources.DataError, match="train split has 10 tokens, fewer than one training window"):
    input_pipeline.tokenize({"train": [b"x" * 10], "validation": [b"x" * 100], "test": [b"y" * 100]}, tokenizer, 16)


def test_hold_out_is_deterministic_and_disjoint(rng):
  text = b"".join(b"line %d %s\n" % (i, rng.bytes(5).hex().encode()) for i in range(3000))
  splits = tfds_builders.hold_out([text])
  again = tfds_builders.hold_out([text])
  assert splits == again
  assert b"".join(d for s in sources.SPLITS for d in splits[s]).count(b"\n") == 3000
  lines = {s: {line for d in splits[s] for line in d.splitlines()} for s in sources.SPLITS}
  assert not lines["train"] & lines["validation"] and not lines["train"] & lines["test"]
  assert lines["validation"] and lines["test"]


def test_local_text_builder_prepares_and_reads_back(tmp_path, rng):
  for i in range(3):
    lines = [f"Book {i} line {j}: {rng.bytes(8).hex()}\n" for j in range(40)]
    (tmp_path / f"book{i}.txt").write_text("".join(lines))
  config = base_config().data
  config.source = "local_text"
  config.files = ml_collections.ConfigDict({"train": str(tmp_path / "book*.txt")})
  config.tfds_dir = str(tmp_path / "tfds")
  documents = sources.load_documents(config)
  assert sum(len(documents[s]) for s in sources.SPLITS) == 40  # 3 short files: cut into 40 pieces
  original = b"".join((tmp_path / f"book{i}.txt").read_bytes() for i in range(3))
  pieces = sorted((d for s in sources.SPLITS for d in documents[s]), key=original.index)
  assert b"".join(pieces) == original
  assert all(p.endswith(b"\n") for p in pieces)  # cut at line ends
  assert (tmp_path / "tfds" / "local_text").is_dir()
  assert any(".array_record-" in p.name for p in (tmp_path / "tfds").rglob("*"))
  config.files = ml_collections.ConfigDict({"train": str(tmp_path / "nothing*.txt")})
  with pytest.raises(sources.DataError, match="matches no files"):
    sources.load_documents(config)


def test_wikitext103_builder_reads_the_official_layout(tmp_path, rng):
  def article(title):
    body = " ".join(rng.choice(["the", "wave", "field", "@-@", "damped"], 50))
    return f" = {title} = \n \n {body} \n \n = = Section = = \n \n {body} \n".encode()

  manual = tmp_path / "manual"
  manual.mkdir()
  contents = {
    "train": [article(f"T{i}") for i in range(5)],
    "valid": [article("V")],
    "test": [article("X"), article("Y")],
  }
  with zipfile.ZipFile(manual / "wikitext-103-raw-v1.zip", "w") as zf:
    for split, articles in contents.items():
      zf.writestr(f"wikitext-103-raw/wiki.{split}.raw", b" \n" + b"".join(articles))
  config = base_config().data
  config.source = "wikitext103"
  config.tfds_dir, config.manual_dir = str(tmp_path / "tfds"), str(manual)
  documents = sources.load_documents(config)
  assert [len(documents[s]) for s in sources.SPLITS] == [5, 1, 2]
  assert b"".join(documents["test"]) == b" \n" + b"".join(contents["test"])
  assert documents["train"][3].lstrip().startswith(b"= T3 =")


def test_train_batches_are_windows_of_the_stream_and_resume_exactly(rng):
  tokens = rng.integers(0, 256, 5000).astype(np.int32)
  iterator = iter(input_pipeline.train_dataset(tokens, seq_len=32, batch_size=4, seed=3))
  first = [next(iterator) for _ in range(5)]
  state = iterator.get_state()
  rest = [next(iterator) for _ in range(60)]  # past one epoch (156 windows / 4): reshuffled, still windows
  for batch in first + rest:
    assert batch.shape == (4, 33)
    for window in batch:
      start = int(np.flatnonzero(tokens == window[0])[0])
      candidates = [s for s in np.flatnonzero(tokens == window[0]) if s % 32 == 0]
      assert any(np.array_equal(tokens[s : s + 33], window) for s in candidates), start
  fresh = iter(input_pipeline.train_dataset(tokens, seq_len=32, batch_size=4, seed=3))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh), rest[0])
  other_seed = next(iter(input_pipeline.train_dataset(tokens, seq_len=32, batch_size=4, seed=4)))
  assert not np.array_equal(other_seed, first[0])


def test_process_shards_are_disjoint(rng):
  tokens = np.arange(32 * 40 + 1, dtype=np.int32)
  seen = []
  for shard in range(2):
    iterator = iter(
      input_pipeline.train_dataset(tokens, seq_len=32, batch_size=1, seed=0, shard_index=shard, shard_count=2)
    )
    seen.append({int(next(iterator)[0, 0]) for _ in range(20)})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40


def test_eval_windows_score_every_target_once(rng):
  for size in (2, 20, 97, 128, 129, 300):
    tokens = rng.integers(0, 256, size).astype(np.int32)
    windows, weights = input_pipeline.eval_windows(tokens, seq_len=32)
    assert weights.sum() == size - 1
    scored = [w[1:][m > 0] for w, m in zip(windows, weights, strict=True)]
    np.testing.assert_array_equal(np.concatenate(scored), tokens[1:])
  with pytest.raises(sources.DataError, match="at least 2"):
    input_pipeline.eval_windows(np.zeros(1, np.int32), 32)
