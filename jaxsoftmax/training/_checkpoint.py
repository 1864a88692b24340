"""Training checkpoints (Orbax) and portable parameter files (``.npz``).

Two formats for two jobs:

* :class:`Checkpoints` keeps the full state of a training run (params,
  optimizer state, epoch, history, key) in an Orbax
  ``CheckpointManager`` directory, so :func:`jaxsoftmax.fit` can resume it.
  Orbax writes each checkpoint into a ``<step>.orbax-checkpoint-tmp-*``
  directory and renames it when complete, so an interrupted save never leaves
  a half-written checkpoint that a resume would pick up.
* :func:`save_params` / :func:`load_params` write and read just the
  parameters as one ``.npz`` file that NumPy alone can open, optionally
  stored in float16 or bfloat16 to halve the size for transport.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
import numpy as np

from jaxsoftmax._core import io as _io
from jaxsoftmax._core import validation as v

# The entry of a params file that holds its format version and leaf dtypes; the
# other entries are the leaves, named by their pytree path.
_META = "__jaxsoftmax_params__"
_FORMAT = 1
# One step of a jax.tree_util.keystr path: [3] or ['name'] (or ["it's"]).
_PATH_TOKEN = re.compile(
    r"\[(\d+)\]|\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
)


def leaf_names(tree: Any, prefix: str = "") -> list[str]:
  """``prefix + keystr(path)`` of each leaf, in ``jax.tree.leaves`` order."""
  return [
      prefix + jax.tree_util.keystr(path)
      for path, _ in jax.tree_util.tree_leaves_with_path(tree)
  ]


def _check_layout(params: Any) -> None:
  """Raises unless every node of ``params`` is a str-keyed dict or a list."""
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    for key in path:
      ok = isinstance(key, jax.tree_util.SequenceKey) or (
          isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str)
      )
      if not ok:
        raise TypeError(
            "save_params stores dicts with str keys and lists of them (the"
            " linear and MLP layouts); got a node at"
            f" {jax.tree_util.keystr(path)!r} of another kind ({key!r})."
        )


def _storage_dtype(leaf: np.ndarray, dtype: jnp.dtype | None) -> np.dtype:
  if dtype is None or not jnp.issubdtype(leaf.dtype, jnp.floating):
    return leaf.dtype
  return dtype


def save_params(
    path: str | os.PathLike[str],
    params: Any,
    *,
    dtype: DTypeLike | None = None,
) -> int:
  """Writes a parameter pytree to one ``.npz`` file atomically; returns its size.

  Each leaf is stored under its pytree path (``['w']``, ``[0]['b']``), so
  :func:`load_params` rebuilds the same dicts and lists. The file is written
  to a temporary name in the same directory, fsynced and renamed over
  ``path``: a reader sees the old file or the new one, never a torn one.
  ``path`` is used as given (no ``.npz`` is appended).

  With ``dtype`` (``float16`` or ``bfloat16``) floating leaves are rounded
  to it first, halving a float32 file; integer leaves are kept. NumPy has no
  bfloat16, so bfloat16 leaves are stored as their uint16 bit pattern and a
  dtype tag restores them.

  Args:
    path: destination file.
    params: a dict with str keys, or a list of them, whose leaves are arrays
      (the layouts of :func:`linear_init` and :func:`mlp_init`).
    dtype: storage dtype for floating leaves; ``None`` keeps each leaf's own.

  Returns:
    The size of the written file in bytes.

  Examples:
    >>> import os, tempfile, jax, jax.numpy as jnp
    >>> import jaxsoftmax as js
    >>> params = js.linear_init(jax.random.key(0), 64, 10)
    >>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
    >>> js.save_params(path, params, dtype=jnp.bfloat16) > 0
    True
    >>> js.load_params(path)["w"].dtype
    dtype(bfloat16)
  """
  if dtype is not None:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"dtype must be None or a floating dtype (float16, bfloat16,"
          f" float32, float64); got {dtype}."
      )
  _check_layout(params)
  names = leaf_names(params)
  if not names:
    raise ValueError("params must hold at least one array; got no leaves.")
  arrays, dtypes, shapes = {}, {}, {}
  for name, leaf in zip(names, jax.tree.leaves(params)):
    a = np.asarray(leaf)
    a = a.astype(_storage_dtype(a, dtype))
    dtypes[name] = a.dtype.name
    shapes[name] = list(a.shape)
    # npz cannot hold bfloat16; its bits fit a uint16 exactly.
    arrays[name] = a.view(np.uint16) if a.dtype == jnp.bfloat16 else a
  arrays[_META] = np.array(json.dumps(
      {"format": _FORMAT, "dtypes": dtypes, "shapes": shapes}))

  with _io.atomic_open(path) as f:
    np.savez(f, **arrays)
  return os.path.getsize(path)


def _parse_path(name: str) -> list[int | str]:
  """Inverse of ``jax.tree_util.keystr`` for list indices and str dict keys."""
  keys: list[int | str] = []
  pos = 0
  for m in _PATH_TOKEN.finditer(name):
    if m.start() != pos:
      break
    keys.append(int(m.group(1)) if m.group(1) else ast.literal_eval(m.group(2)))
    pos = m.end()
  if pos != len(name):
    raise ValueError(f"params file entry {name!r} is not a pytree path.")
  return keys


def _build(entries: Sequence[tuple[list[int | str], Any]], where: str) -> Any:
  """Nested dicts / lists from (key path, leaf) pairs."""
  if len(entries) == 1 and not entries[0][0]:
    return entries[0][1]
  children: dict[int | str, list[tuple[list[int | str], Any]]] = {}
  for keys, leaf in entries:
    if not keys:
      raise ValueError(f"params file has a leaf and a subtree at {where!r}.")
    children.setdefault(keys[0], []).append((keys[1:], leaf))
  heads = list(children)
  if all(isinstance(k, int) for k in heads):
    if sorted(heads) != list(range(len(heads))):
      raise ValueError(
          f"params file lists indices {sorted(heads)} under {where!r};"
          " expected 0..n-1."
      )
    return [_build(children[i], f"{where}[{i}]") for i in range(len(heads))]
  return {k: _build(children[k], f"{where}[{k!r}]") for k in heads}


def load_params(path: str | os.PathLike[str]) -> Any:
  """Reads a parameter pytree written by :func:`save_params`.

  Arrays come back in the dtype they were stored in (the ``dtype`` given to
  :func:`save_params`, else the original one), bfloat16 included. To train
  on params stored in half precision, cast them back, e.g.
  ``jax.tree.map(lambda a: a.astype(jnp.float32), params)``.

  Args:
    path: a file written by :func:`save_params`.

  Returns:
    The pytree of ``jax.Array`` leaves, with the structure it was saved with
    (float64 leaves need ``jax_enable_x64``, as everywhere in JAX).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: the file is not a params file, or is truncated or damaged:
      not a zip archive, a member failing its CRC, metadata that is not
      JSON or that disagrees with the stored arrays' names, dtypes or
      shapes. Every message names the file.

  Examples:
    >>> import os, tempfile, jax
    >>> import jaxsoftmax as js
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.npz")
    >>> _ = js.save_params(path, js.mlp_init(jax.random.key(0), [4, 8, 3]))
    >>> [p["w"].shape for p in js.load_params(path)]
    [(4, 8), (8, 3)]
  """
  where = repr(os.fspath(path))
  arrays = _read_npz(os.fspath(path))
  if _META not in arrays:
    raise ValueError(
        f"{where} is not a params file written by save_params (no {_META!r}"
        f" entry); its entries are {sorted(arrays)[:5]}."
    )
  dtypes = _checked_meta(where, arrays.pop(_META), arrays)
  entries = []
  try:
    for name, dtype in dtypes.items():
      a = arrays[name]
      if dtype == "bfloat16":
        a = a.view(jnp.bfloat16)
      entries.append((_parse_path(name), jnp.asarray(a)))
    return _build(entries, "params")
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from error


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Every entry of the ``.npz`` archive at ``path``, each CRC-checked."""
  hint = (
      f"{path!r} cannot be read as a params file (truncated or damaged?);"
      " write it again with save_params"
  )
  if not zipfile.is_zipfile(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"no params file at {path!r}.")
    raise ValueError(
        f"{hint}: it is not a .npz (zip) archive, which is what save_params"
        " writes."
    )
  try:
    # Our own handle: np.load leaks its file when the archive is damaged.
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
      return {name: f[name] for name in f.files}
  # A damaged member surfaces as a CRC mismatch (BadZipFile), a short read
  # (EOFError) or a bad .npy header (ValueError).
  except (zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
    raise ValueError(f"{hint}: {_summary(error)}") from error


def _checked_meta(
    where: str, raw: np.ndarray, arrays: Mapping[str, np.ndarray]
) -> dict[str, str]:
  """The leaf dtypes of a params file, checked against its stored arrays.

  Returns:
    Leaf name (a pytree path) -> the dtype it was saved in.
  """
  try:
    meta = json.loads(str(raw))
  except ValueError as error:
    raise ValueError(
        f"{where} has a damaged {_META!r} entry ({_summary(error)})."
    ) from error
  if not isinstance(meta, dict):
    raise ValueError(
        f"{where} has a {_META!r} entry holding {type(meta).__name__}; "
        "expected a JSON object with format and dtypes."
    )
  if meta.get("format") != _FORMAT:
    raise ValueError(
        f"{where} has params file format {meta.get('format')}; this version"
        f" reads format {_FORMAT}."
    )
  dtypes, shapes = meta.get("dtypes"), meta.get("shapes")
  if not isinstance(dtypes, dict) or set(dtypes) != set(arrays) or not dtypes:
    listed = sorted(dtypes) if isinstance(dtypes, dict) else dtypes
    raise ValueError(
        f"{where} lists the arrays {listed} in its metadata but holds"
        f" {sorted(arrays)}; the file is damaged."
    )
  for name, dtype in dtypes.items():
    a = arrays[name]
    # bfloat16 leaves are stored as their uint16 bits.
    stored = "uint16" if dtype == "bfloat16" else dtype
    if a.dtype.name != stored:
      raise ValueError(
          f"{where} holds {name} as {a.dtype.name}, but its metadata says"
          f" {dtype} (stored as {stored}); the file is damaged."
      )
    # Files from before shapes were recorded carry dtypes only.
    if shapes is not None and (
        not isinstance(shapes, dict) or shapes.get(name) != list(a.shape)
    ):
      got = shapes.get(name) if isinstance(shapes, dict) else shapes
      raise ValueError(
          f"{where} holds {name} with shape {list(a.shape)}, but its metadata"
          f" says {got}; the file is damaged."
      )
  return dtypes


class Checkpoints:
  """The checkpoint directory of one training run, kept by Orbax.

  Each checkpoint is one epoch: a ``state`` item holding named groups of
  arrays (for :func:`jaxsoftmax.fit`: the params', the optimizer state's and
  the best params' leaves, as flat lists) and a JSON ``meta`` item (epoch,
  history, key). Groups are flat lists so that a checkpoint restores into any
  optimizer state of the same leaves, and so shapes can be compared leaf by
  leaf before restoring. Only the newest ``keep`` checkpoints are kept.

  Args:
    directory: where the checkpoints live (created if missing).
    keep: how many of the most recent checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3):
    v.check_positive_int("keep", keep)
    # Orbax takes about half a second to import; only runs that checkpoint
    # pay for it.
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
        ),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

  def latest(self) -> int | None:
    """The newest complete checkpoint's epoch, or None if there is none."""
    return self._manager.latest_step()

  def save(
      self,
      epoch: int,
      state: Mapping[str, Sequence[jax.Array]],
      meta: Mapping[str, Any],
  ) -> None:
    """Writes the checkpoint of ``epoch`` and waits until it is on disk."""
    ocp = self._ocp
    self._manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({k: list(g) for k, g in state.items()}),
            meta=ocp.args.JsonSave(dict(meta)),
        ),
    )
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    """The epochs of the complete checkpoints, newest first."""
    return sorted(self._manager.all_steps(), reverse=True)

  def restore(
      self,
      epoch: int,
      like: Mapping[str, Sequence[jax.Array]],
      names: Mapping[str, Sequence[str]],
  ) -> tuple[dict[str, list[jax.Array]], Any]:
    """Reads the checkpoint of ``epoch`` into arrays shaped like ``like``.

    The stored tree (groups, leaf counts, shapes, dtypes) is compared with
    ``like`` before anything is read, and the restored arrays again after,
    so a checkpoint that restores at all restores completely.

    Args:
      epoch: a checkpointed epoch, e.g. one of :meth:`steps`.
      like: group name -> leaves whose shapes and dtypes the stored ones must
        have.
      names: group name -> a readable name for each leaf, for errors.

    Returns:
      ``(state, meta)``: group name -> list of arrays, and the JSON meta
      (unchecked: its meaning is the caller's).

    Raises:
      ValueError: if the checkpoint cannot be read (a damaged, truncated or
        missing file: the message says which error Orbax met), or its groups,
        leaf counts, shapes or dtypes differ from ``like``.
    """
    ocp = self._ocp
    where = f"the checkpoint of epoch {epoch} in {self.directory}"
    # Every file Orbax will read is read here first, one at a time: Orbax
    # reads concurrently on an asyncio loop that it closes at the first
    # failure, and the reads still in flight then fail again from
    # tensorstore's threads ("Event loop is closed").
    try:
      _check_state_files(os.path.join(self.directory, str(epoch), "state"))
      stored = self._manager.item_metadata(epoch)["state"]
      meta = self._manager.restore(
          epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      )["meta"]
    # Orbax reports a damaged file as whatever its parser met (KeyError,
    # JSONDecodeError, UnicodeDecodeError, tensorstore's ValueError...).
    except Exception as error:  # noqa: BLE001
      raise ValueError(f"{where} cannot be read: {_summary(error)}") from error
    if stored is None:
      raise ValueError(f"{where} has no state metadata (state/_METADATA).")
    _check_groups(where, stored.tree, like, names)
    target = {
        group: [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
        for group, leaves in like.items()
    }
    try:
      out = self._manager.restore(
          epoch,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
      )
    except Exception as error:  # noqa: BLE001  (as above)
      raise ValueError(f"{where} cannot be read: {_summary(error)}") from error
    state = out["state"]
    _check_groups(where, state, like, names)
    return {k: list(g) for k, g in state.items()}, meta

  def close(self) -> None:
    self._manager.close()


def _check_state_files(directory: str) -> None:
  """Parses the JSON files and reads every stored value of a state item.

  The arrays live in an OCDBT store, which checksums its files, so reading
  each value once finds any damaged byte. Raises whatever the first damaged
  file raises.
  """
  import tensorstore as ts

  for name in ["_sharding", *glob.glob("array_metadatas/*", root_dir=directory)]:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      with open(path, "rb") as f:
        json.loads(f.read())
  # Without the trailing "/" the file driver reads "state" as a prefix of
  # names in its parent, finds no manifest and lists an empty store.
  base = {"driver": "file", "path": os.path.join(directory, "")}
  store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
  keys = store.list().result()
  if not keys:
    raise ValueError(f"no arrays stored in {directory}")
  for key in keys:
    store.read(key).result()


def _summary(error: BaseException, limit: int = 300) -> str:
  """``Type: first line`` of ``error``, cut to ``limit`` characters.

  Tensorstore puts a kilobyte-long spec after the first line.
  """
  lines = str(error).strip().splitlines() or [""]
  text = f"{type(error).__name__}: {lines[0]}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_groups(
    where: str,
    stored: Any,
    like: Mapping[str, Sequence[jax.Array]],
    names: Mapping[str, Sequence[str]],
) -> None:
  """Raises unless ``stored`` holds ``like``'s groups, leaf counts and types.

  ``stored`` is Orbax's metadata tree or the restored arrays: group name ->
  a list of objects with ``shape`` and ``dtype``.
  """
  if not isinstance(stored, Mapping) or set(stored) != set(like):
    got = sorted(stored) if isinstance(stored, Mapping) else type(stored)
    raise ValueError(
        f"{where} holds {got}; this run needs {sorted(like)}. Resume with the"
        " same settings (validation_fraction) it was written with, or start a"
        " fresh directory."
    )
  for group, leaves in like.items():
    if (not isinstance(stored[group], Sequence)
        or len(stored[group]) != len(leaves)):
      count = (len(stored[group]) if isinstance(stored[group], Sequence)
               else type(stored[group]).__name__)
      raise ValueError(
          f"{where} holds {count} {group} arrays; this run has {len(leaves)}"
          f" ({list(names[group])}). Was it written for another model or"
          " optimizer?"
      )
    for name, got, want in zip(names[group], stored[group], leaves):
      shape = tuple(getattr(got, "shape", None) or ())
      dtype = getattr(got, "dtype", None)
      if shape != tuple(want.shape) or dtype != want.dtype:
        raise ValueError(
            f"{where} holds {name} with shape {shape} and dtype {dtype}; this"
            f" run has shape {tuple(want.shape)} and dtype {want.dtype}. Was"
            " it written for another model?"
        )
