"""Orbax checkpoints of fit (resume bit for bit) and save_params / load_params."""

import json
import os
import re
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsoftmax as js
from jaxsoftmax.training._checkpoint import _META, load_params, save_params
from jaxsoftmax.training._fit import fit

# One optimizer with state (momentum) and one problem for every fit here, so
# the jitted epoch compiles once for the module.
MOMENTUM = optax.sgd(0.1, momentum=0.9)
KEY = jax.random.key(3)
N, D, K, B = 120, 5, 3, 16
_x = np.random.default_rng(0).normal(size=(N, D))
_teacher = np.random.default_rng(1).normal(size=(D, K))
X = jnp.asarray(_x)
Y = jnp.asarray(np.argmax(_x @ _teacher, axis=1).astype(np.int32))
P0 = js.linear_init(jax.random.key(0), D, K, dtype=jnp.float64)


def _fit(directory=None, *, params=P0, data=(X, Y), key=KEY, **kwargs):
  options = dict(optimizer=MOMENTUM, batch_size=B, key=key,
                 checkpoint_dir=directory)
  options.update(kwargs)
  return fit(js.softmax_regression_loss, params, data, **options)


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def straight():
  """Five uninterrupted epochs, the reference every resumed run must equal."""
  return _fit(epochs=5)


# ----------------------------------------------------------------------------
# Resume.
# ----------------------------------------------------------------------------


def test_resume_after_two_epochs_equals_five_straight_epochs(tmp_path, straight):
  first, history2 = _fit(tmp_path, epochs=2, keep_checkpoints=2)
  assert _steps(tmp_path) == [1, 2]
  params, history = _fit(tmp_path, epochs=5, resume=True, keep_checkpoints=2)
  _assert_trees_equal(params, straight[0])
  assert history.epoch == [1, 2, 3, 4, 5]
  assert history.loss == straight[1].loss
  assert history.loss[:2] == history2.loss
  assert not np.array_equal(params["w"], first["w"])
  # Only the newest keep_checkpoints remain.
  assert _steps(tmp_path) == [4, 5]
  # Resuming a finished run trains nothing and returns its params.
  again, history_again = _fit(tmp_path, epochs=5, resume=True)
  _assert_trees_equal(again, straight[0])
  assert history_again.epoch == [1, 2, 3, 4, 5]


def test_checkpoint_every_saves_on_schedule_and_at_the_end(tmp_path, straight):
  _fit(tmp_path, epochs=3, checkpoint_every=2)
  assert _steps(tmp_path) == [2, 3]
  params, _ = _fit(tmp_path, epochs=5, resume=True, checkpoint_every=2)
  _assert_trees_equal(params, straight[0])


def test_resume_ignores_a_partially_written_checkpoint(tmp_path, straight):
  _fit(tmp_path, epochs=2)
  # What an interrupted save of epoch 3 leaves behind: Orbax's temporary
  # directory, never renamed to "3".
  partial = tmp_path / "3.orbax-checkpoint-tmp-1712345678"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 7)
  params, history = _fit(tmp_path, epochs=5, resume=True)
  _assert_trees_equal(params, straight[0])
  assert history.loss == straight[1].loss


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, straight):
  params, history = _fit(tmp_path / "new", epochs=5, resume=True)
  _assert_trees_equal(params, straight[0])
  assert history.epoch == [1, 2, 3, 4, 5]


def test_resume_keeps_early_stopping_state(tmp_path):
  # Random labels: the validation loss bottoms out at epoch 4 and early
  # stopping ends the run at epoch 6 (patience 2). An interruption after
  # epoch 5 must not lose the best epoch's params or loss. (150 rows with a
  # fifth held out train on 120, the shapes of the other fits here.)
  rng = np.random.default_rng(1)
  data = (rng.normal(size=(150, D)), rng.integers(0, K, size=150).astype(np.int32))
  options = dict(data=data, validation_fraction=0.2, patience=2)
  ref_params, ref = _fit(epochs=30, **options)
  assert ref.stopped_early and ref.best_epoch > 1
  assert ref.epoch[-1] == ref.best_epoch + 2
  _fit(tmp_path, epochs=ref.epoch[-2], **options)
  params, history = _fit(tmp_path, epochs=30, resume=True, **options)
  _assert_trees_equal(params, ref_params)
  assert history.to_dict() | {"seconds": []} == ref.to_dict() | {"seconds": []}


def test_resume_with_other_shapes_raises(tmp_path):
  _fit(tmp_path, epochs=1)
  wider = {"w": np.zeros((D, K + 1)), "b": np.zeros(K + 1)}
  with pytest.raises(ValueError, match=r"params\['b'\] with shape \(3,\) .*"
                     r" this run has shape \(4,\)"):
    _fit(tmp_path, params=wider, epochs=2, resume=True)
  mlp = [{"w": np.zeros((D, 4)), "b": np.zeros(4)},
         {"w": np.zeros((4, K)), "b": np.zeros(K)}]
  with pytest.raises(ValueError, match=r"holds 2 params arrays; this run has 4"):
    _fit(tmp_path, params=mlp, epochs=2, resume=True)


def test_resume_with_another_key_raises(tmp_path):
  _fit(tmp_path, epochs=1)
  with pytest.raises(ValueError, match=r"written with key data .* Pass the same key"):
    _fit(tmp_path, key=jax.random.key(4), epochs=2, resume=True)


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
  _fit(tmp_path, epochs=1)
  with pytest.raises(ValueError, match=r"already holds checkpoints \(newest:"
                     r" epoch 1\); pass resume=True"):
    _fit(tmp_path, epochs=2)


# ----------------------------------------------------------------------------
# Resume over damaged checkpoints: each kind of damage to the newest one
# falls back to the one before, which resumes bit for bit.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
  """A run of 4 epochs that keeps the checkpoints of epochs 2, 3 and 4."""
  directory = tmp_path_factory.mktemp("run")
  _fit(directory, epochs=4, keep_checkpoints=3)
  assert _steps(directory) == [2, 3, 4]
  return directory


def _data_file(step):
  return next((step / "state" / "d").iterdir())


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _edit_meta(step, edit):
  """Rewrites the JSON meta of ``step`` after ``edit`` changed it in place."""
  path = step / "meta" / "metadata"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


def _edit_history(step, edit):
  _edit_meta(step, lambda meta: edit(meta["history"]))


def _remove(path):
  shutil.rmtree(path) if path.is_dir() else path.unlink()


READ = r"cannot be read: "
DAMAGE = {
    # The arrays' bytes (tensorstore checks their checksums).
    "data file truncated": (lambda s: _truncate(_data_file(s)),
                            READ + r"ValueError: OUT_OF_RANGE"),
    "data file garbled": (lambda s: _garble(_data_file(s)),
                          READ + r"ValueError: DATA_LOSS"),
    "data file deleted": (lambda s: _remove(_data_file(s)),
                          READ + r"ValueError: NOT_FOUND"),
    "manifest truncated": (lambda s: _truncate(s / "state" / "manifest.ocdbt"),
                           READ + r"ValueError: DATA_LOSS"),
    # The tree of the stored arrays.
    "state metadata truncated": (lambda s: _truncate(s / "state" / "_METADATA"),
                                 READ + r"JSONDecodeError"),
    "state metadata garbled": (lambda s: _garble(s / "state" / "_METADATA"),
                               READ + r"UnicodeDecodeError"),
    "state metadata deleted": (lambda s: _remove(s / "state" / "_METADATA"),
                               r"has no state metadata"),
    "array metadata truncated": (
        lambda s: _truncate(s / "state" / "array_metadatas" / "process_0"),
        READ + r"JSONDecodeError"),
    "sharding truncated": (lambda s: _truncate(s / "state" / "_sharding"),
                           READ + r"JSONDecodeError"),
    "state deleted": (lambda s: _remove(s / "state"),
                      READ + r"ValueError: no arrays stored in "),
    # The JSON meta: epoch, history, key.
    "meta deleted": (lambda s: _remove(s / "meta" / "metadata"),
                     READ + r"FileNotFoundError"),
    "meta truncated": (lambda s: _truncate(s / "meta" / "metadata"),
                       READ + r"JSONDecodeError"),
    "history too short": (
        lambda s: _edit_history(s, lambda h: h["loss"].pop()),
        r"history .* has loss = .*; expected a list of 4 numbers"),
    "history too long": (
        lambda s: _edit_history(s, lambda h: h.update(epoch=list(range(1, 9)))),
        r"lists epochs \[1, 2, 3, 4, 5, 6, 7, 8\]; expected 1..4"),
    "history not numbers": (
        lambda s: _edit_history(s, lambda h: h.update(seconds=["x"] * 4)),
        r"has seconds = \['x'.*expected a list of 4 numbers"),
    "history field missing": (
        lambda s: _edit_history(s, lambda h: h.pop("best_epoch")),
        r"history .* holds \[.*\]; expected \[.*'best_epoch'"),
    "key edited": (lambda s: _edit_meta(s, lambda m: m.update(key=[0, 4])),
                   r"written with key data \[0, 4\]"),
    "epoch edited": (lambda s: _edit_meta(s, lambda m: m.update(epoch=7)),
                     r"says epoch 7 and lists epochs \[1, 2, 3, 4\]"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_over_a_damaged_checkpoint(
    tmp_path, three_checkpoints, straight, damage):
  directory = tmp_path / "run"
  shutil.copytree(three_checkpoints, directory)
  apply, reason = DAMAGE[damage]
  apply(directory / "4")
  with pytest.warns(UserWarning, match=r"skips the checkpoint of epoch 4 and"
                    r" resumes from the one of epoch 3: .*" + reason):
    params, history = _fit(directory, epochs=5, resume=True,
                           keep_checkpoints=3)
  _assert_trees_equal(params, straight[0])
  assert history.loss == straight[1].loss


def test_resume_with_every_checkpoint_damaged_lists_each(
    tmp_path, three_checkpoints):
  directory = tmp_path / "run"
  shutil.copytree(three_checkpoints, directory)
  _truncate(_data_file(directory / "4"))
  _remove(directory / "3" / "state" / "_METADATA")
  _edit_history(directory / "2", lambda h: h["loss"].pop())
  with pytest.raises(ValueError) as info:
    _fit(directory, epochs=5, resume=True, keep_checkpoints=3)
  lines = str(info.value).splitlines()
  assert lines[0].startswith("no checkpoint in ") and "rejected" in lines[0]
  assert re.match(r"  epoch 4: .*cannot be read: ValueError: OUT_OF_RANGE",
                  lines[1])
  assert re.match(r"  epoch 3: .*has no state metadata", lines[2])
  assert re.match(r"  epoch 2: .*has loss = ", lines[3])
  assert len(lines) == 4
  # Nothing was trained or written on top of the damaged run.
  assert _steps(directory) == [2, 3, 4]


# ----------------------------------------------------------------------------
# save_params / load_params.
# ----------------------------------------------------------------------------

# NumPy-built params in the layouts of linear_init and mlp_init: these tests
# need no compiled JAX code.
_rng = np.random.default_rng(2)


def _layer(fan_in, fan_out):
  return {"w": _rng.normal(size=(fan_in, fan_out)).astype(np.float32),
          "b": _rng.normal(size=fan_out).astype(np.float32)}


LINEAR = _layer(256, 100)
MLP = [_layer(64, 32), _layer(32, 10)]


@pytest.mark.parametrize("params", [LINEAR, MLP], ids=["linear", "mlp"])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_params_round_trip(tmp_path, params, dtype):
  path = tmp_path / "params.npz"
  size = save_params(path, params, dtype=dtype)
  assert size == os.path.getsize(path)
  loaded = load_params(path)
  expected = jax.tree.map(lambda a: a.astype(dtype or a.dtype), params)
  _assert_trees_equal(loaded, expected)
  assert isinstance(loaded, type(params))
  # The file opens with NumPy alone: leaves are named by their pytree path.
  if isinstance(params, list):
    name, w = "[0]['w']", expected[0]["w"]
  else:
    name, w = "['w']", expected["w"]
  with np.load(path) as f:
    stored = f[name]
  if dtype == jnp.bfloat16:
    assert stored.dtype == np.uint16
    stored = stored.view(jnp.bfloat16)
  np.testing.assert_array_equal(stored, np.asarray(w))


def test_odd_dict_keys_round_trip(tmp_path):
  params = {"it's": np.ones(2), "a]b": [np.zeros(1), {'"q"': np.arange(3)}],
            "0": np.ones(1)}
  save_params(tmp_path / "p.npz", params)
  _assert_trees_equal(load_params(tmp_path / "p.npz"), params)


def test_half_precision_halves_the_file(tmp_path):
  full = save_params(tmp_path / "f32.npz", LINEAR)
  half = save_params(tmp_path / "bf16.npz", LINEAR, dtype=jnp.bfloat16)
  assert full > 4 * 256 * 100
  assert 0.5 < half / full < 0.52


def test_integer_leaves_keep_their_dtype(tmp_path):
  params = {"w": jnp.ones((2, 3)), "step": jnp.arange(4, dtype=jnp.int32)}
  save_params(tmp_path / "p.npz", params, dtype=jnp.float16)
  loaded = load_params(tmp_path / "p.npz")
  assert loaded["w"].dtype == jnp.float16 and loaded["step"].dtype == jnp.int32


def test_save_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "params.npz"
  save_params(path, LINEAR)

  def broken_savez(file, **arrays):
    file.write(b"half a file")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", broken_savez)
  with pytest.raises(OSError, match="disk full"):
    save_params(path, MLP)
  # The old file is intact and no temporary file is left behind.
  _assert_trees_equal(load_params(path), LINEAR)
  assert os.listdir(tmp_path) == ["params.npz"]


class _Layer(NamedTuple):
  w: jax.Array


def test_save_params_rejects_what_it_cannot_store(tmp_path):
  with pytest.raises(TypeError, match=r"dtype must be None or a floating dtype"):
    save_params(tmp_path / "p.npz", LINEAR, dtype=jnp.int8)
  with pytest.raises(TypeError, match=r"dicts with str keys and lists .* '\.w'"):
    save_params(tmp_path / "p.npz", _Layer(jnp.ones(2)))
  with pytest.raises(TypeError, match=r"dicts with str keys"):
    save_params(tmp_path / "p.npz", {1: jnp.ones(2)})
  assert not os.listdir(tmp_path)


def test_load_params_rejects_other_npz_files(tmp_path):
  np.savez(tmp_path / "other.npz", w=np.ones(3))
  with pytest.raises(ValueError, match=r"not a params file written by save_params"):
    load_params(tmp_path / "other.npz")


# Damaged params files: every error names the file, none returns garbage.
def _rewrite(path, edit):
  """Rewrites the params file at ``path`` after ``edit`` changed its entries."""
  with np.load(path) as f:
    entries = {name: f[name] for name in f.files}
  edit(entries)
  np.savez(path, **entries)


def _edit_params_meta(edit):
  def apply(entries):
    meta = json.loads(str(entries[_META]))
    edit(meta)
    entries[_META] = np.array(json.dumps(meta))
  return apply


def _set_meta(text):
  return lambda entries: entries.update({_META: np.array(text)})


def _rename_w(entries):
  """Stores leaf ['w'] under the name 'w', which is no pytree path."""
  entries["w"] = entries.pop("['w']")
  meta = json.loads(str(entries[_META]))
  for field in ("dtypes", "shapes"):
    meta[field]["w"] = meta[field].pop("['w']")
  entries[_META] = np.array(json.dumps(meta))


def _write_npy(path):
  with open(path, "wb") as f:
    np.save(f, np.ones(3))


def _flip_middle_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


NOT_ZIP = r"cannot be read as a params file .*not a .npz \(zip\) archive"
PARAMS_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), NOT_ZIP),
    "last byte cut": (lambda p: p.write_bytes(p.read_bytes()[:-1]), NOT_ZIP),
    "garbled": (_flip_middle_byte, r"cannot be read .*BadZipFile: Bad CRC-32"),
    "text file": (lambda p: p.write_text("w,b\n1,2\n"), NOT_ZIP),
    "npy file": (_write_npy, NOT_ZIP),
    "metadata not JSON": (lambda p: _rewrite(p, _set_meta("{format: 1")),
                          r"damaged '__jaxsoftmax_params__' entry"
                          r" \(JSONDecodeError"),
    "metadata a list": (lambda p: _rewrite(p, _set_meta("[1]")),
                        r"entry holding list; expected a JSON object"),
    "metadata empty": (lambda p: _rewrite(p, _set_meta("{}")),
                       r"has params file format None"),
    "dtypes missing": (
        lambda p: _rewrite(p, _edit_params_meta(lambda m: m.pop("dtypes"))),
        r"lists the arrays None in its metadata but holds \[\"\['b'\]\","),
    "dtypes empty": (
        lambda p: _rewrite(p, _edit_params_meta(lambda m: m.update(dtypes={}))),
        r"lists the arrays \[\] in its metadata"),
    "array missing": (lambda p: _rewrite(p, lambda e: e.pop("['b']")),
                      r"lists the arrays .* but holds \[\"\['w'\]\"\]"),
    "dtype edited to bfloat16": (
        lambda p: _rewrite(p, _edit_params_meta(
            lambda m: m["dtypes"].update({"['w']": "bfloat16"}))),
        r"holds \['w'\] as float32, but its metadata says bfloat16 \(stored as"
        r" uint16\)"),
    "dtype edited to int32": (
        lambda p: _rewrite(p, _edit_params_meta(
            lambda m: m["dtypes"].update({"['b']": "int32"}))),
        r"holds \['b'\] as float32, but its metadata says int32"),
    "shape edited": (
        lambda p: _rewrite(p, _edit_params_meta(
            lambda m: m["shapes"].update({"['w']": [4, 6]}))),
        r"holds \['w'\] with shape \[4, 3\], but its metadata says \[4, 6\]"),
    "not a pytree path": (lambda p: _rewrite(p, _rename_w),
        r"entry 'w' is not a pytree path"),
}


@pytest.mark.parametrize("damage", list(PARAMS_DAMAGE))
def test_load_params_names_the_file_of_a_damaged_params_file(tmp_path, damage):
  path = tmp_path / "params.npz"
  save_params(path, {"w": np.ones((4, 3), np.float32),
                     "b": np.zeros(3, np.float32)})
  apply, reason = PARAMS_DAMAGE[damage]
  apply(path)
  with pytest.raises(ValueError, match=reason) as info:
    load_params(path)
  assert str(info.value).startswith(repr(str(path)))


def test_load_params_missing_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no params file at .*nope.npz"):
    load_params(tmp_path / "nope.npz")


def test_load_params_reads_files_without_shapes(tmp_path):
  # Files written before save_params recorded shapes carry dtypes only.
  path = tmp_path / "params.npz"
  save_params(path, MLP, dtype=jnp.bfloat16)
  _rewrite(path, _edit_params_meta(lambda m: m.pop("shapes")))
  loaded = load_params(path)
  assert loaded[0]["w"].dtype == jnp.bfloat16
  assert loaded[0]["w"].shape == MLP[0]["w"].shape
