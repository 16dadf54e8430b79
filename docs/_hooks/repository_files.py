"""MkDocs hook: serve the committed benchmark results and the notebooks from where they live.

The results pages include the tables of `benchmarks/results/*.md` and show its plots; copying them into
`docs/` would leave two versions to keep equal, so the build reads them from the repository instead.
"""

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

REPO = Path(__file__).resolve().parents[2]
SERVED = {"benchmarks/results": ("*.md", "*.png", "*.json", "*.jsonl"), "notebooks": ("*.ipynb",)}
# Where each repository folder appears in the site.
SITE_FOLDER = {"benchmarks/results": "results/data", "notebooks": "notebooks"}


def on_files(files: Files, config) -> Files:
  for folder, patterns in SERVED.items():
    for pattern in patterns:
      for path in sorted((REPO / folder).glob(pattern)):
        served = File.generated(config, f"{SITE_FOLDER[folder]}/{path.name}", abs_src_path=str(path))
        served.inclusion = InclusionLevel.NOT_IN_NAV  # reached through the results pages' links
        files.append(served)
  return files
