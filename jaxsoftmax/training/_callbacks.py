"""What :func:`jaxsoftmax.fit` does between epochs, one small object per task.

Each callback has ``after_epoch(epoch)``, called with an :class:`Epoch` once
the epoch's steps and evaluation have come back to the host, in the order
fit lists them: :class:`NanGuard` (raise on a non-finite step, before the
epoch is recorded), :class:`EarlyStopping` (track the best validation epoch,
stop after ``patience`` without improvement), :class:`Progress` (the tqdm
bar) and :class:`Checkpointer` (Orbax saves).

References:
  L. Prechelt, "Early stopping - but when?", Neural Networks: Tricks of the
  Trade, Springer (1998).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxsoftmax.training import _checkpoint


@dataclasses.dataclass
class Epoch:
  """One finished epoch of :func:`jaxsoftmax.fit`, as the callbacks see it.

  Attributes:
    number: the epoch, from 1.
    params: the params after it (the last finite ones if a step diverged).
    opt_state: the optimizer state after it.
    stats: per-step ``(loss [steps], loss_finite [steps], grads_finite
      [steps, leaves], params_finite [steps, leaves])``, NumPy.
    history: the run's :class:`jaxsoftmax.History`, this epoch recorded
      (except for :class:`NanGuard`, which runs before).
  """

  number: int
  params: Any
  opt_state: Any
  stats: tuple[np.ndarray, ...]
  history: Any


class NanGuard:
  """Raises ``error`` at the first epoch with a non-finite step.

  Args:
    steps: steps per epoch.
    names: ``(grads leaf names, params leaf names)`` in leaf order.
    explain: ``explain(epoch, step, global_step) -> str | None``, why the
      minibatch of a step whose loss is non-finite is invalid, if it is.
    error: the exception class, built with the message and ``epoch``,
      ``step``, ``global_step``, ``tensor``, ``params``, ``history``.
  """

  def __init__(self, steps: int, names: tuple[Sequence[str], Sequence[str]],
               explain: Callable[[Epoch, int, int], str | None],
               error: type[Exception]):
    self.steps, self.names, self.explain, self.error = (
        steps, names, explain, error)

  def first_bad(self, stats) -> tuple[int, str] | None:
    """(step index, tensor name) of the first non-finite step, or None."""
    _, loss_ok, grads_ok, params_ok = stats
    ok = loss_ok & grads_ok.all(axis=1) & params_ok.all(axis=1)
    if ok.all():
      return None
    s = int(np.argmin(ok))
    if not loss_ok[s]:
      return s, "loss"
    if not grads_ok[s].all():
      return s, self.names[0][int(np.argmin(grads_ok[s]))]
    return s, self.names[1][int(np.argmin(params_ok[s]))]

  def after_epoch(self, epoch: Epoch) -> None:
    bad = self.first_bad(epoch.stats)
    if bad is None:
      return
    s, tensor = bad
    global_step = (epoch.number - 1) * self.steps + s + 1
    cause = self.explain(epoch, s, global_step) if tensor == "loss" else None
    advice = (
        f" because the minibatch is invalid for loss_fn: {cause}"
        if cause else
        " (NaN or inf). Lower the learning rate, clip the gradients"
        " (optax.clip_by_global_norm) or compute in float32."
    )
    raise self.error(
        f"training diverged in epoch {epoch.number}, step {s + 1} of"
        f" {self.steps} (global step {global_step}): {tensor} became"
        f" non-finite{advice} TrainingDiverged.params holds the last finite"
        " params, from before that step.",
        epoch=epoch.number, step=s + 1, global_step=global_step,
        tensor=tensor, params=epoch.params, history=epoch.history,
    )


class EarlyStopping:
  """Keeps the params of the lowest validation loss; stops after ``patience``.

  Sets ``history.best_epoch`` and, once ``patience`` epochs (None: never)
  passed without a lower validation loss, ``history.stopped_early``.

  Args:
    params: the best params so far (the start, or a resumed run's best).
    patience: epochs without improvement before stopping, or None.
    history: the run's history so far (a resumed run's best epoch).
  """

  def __init__(self, params: Any, patience: int | None, history: Any):
    self.best_params, self.patience = params, patience
    best = history.best_epoch
    self.best_loss = np.inf if best is None else history.val_loss[best - 1]

  def after_epoch(self, epoch: Epoch) -> None:
    history = epoch.history
    val_loss = history.val_loss[-1]
    if val_loss < self.best_loss:
      self.best_loss, self.best_params = val_loss, epoch.params
      history.best_epoch = epoch.number
    elif (self.patience is not None
          and epoch.number - (history.best_epoch or 0) >= self.patience):
      history.stopped_early = True


class Progress:
  """A tqdm bar over epochs with the latest figures; a context manager.

  Args:
    total: the run's epochs.
    initial: epochs done before (a resumed run's).
    show: draw it; None draws it only when stderr is a terminal.
  """

  _FIGURES = {"loss": "loss", "train_acc": "train_accuracy",
              "val_loss": "val_loss", "val_acc": "val_accuracy",
              "test_acc": "test_accuracy"}

  def __init__(self, total: int, initial: int, show: bool | None):
    show = sys.stderr.isatty() if show is None else bool(show)
    self.bar = tqdm(total=total, initial=min(initial, total),
                    disable=not show, desc="fit", unit="epoch",
                    file=sys.stderr)

  def __enter__(self) -> Progress:
    self.bar.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    self.bar.__exit__(*exc)

  def after_epoch(self, epoch: Epoch) -> None:
    history = epoch.history
    self.bar.set_postfix(
        {name: f"{getattr(history, field)[-1]:.4g}"
         for name, field in self._FIGURES.items() if getattr(history, field)},
        refresh=False)
    self.bar.update()


class Checkpointer:
  """Saves params, optimizer state, history and key every ``every`` epochs.

  And at the last epoch (``epochs``, or one that stopped early). With
  ``best`` (an :class:`EarlyStopping`), its best params are saved too, as
  ``"best_params"``.

  Args:
    checkpoints: the :class:`jaxsoftmax.training._checkpoint.Checkpoints` to write.
    every: save every this many epochs.
    epochs: the run's last epoch.
    key_data: the run's key, as a list of ints.
    best: the :class:`EarlyStopping` whose best params to save, or None.
  """

  def __init__(self, checkpoints: _checkpoint.Checkpoints, every: int,
               epochs: int, key_data: list[int],
               best: EarlyStopping | None):
    self.checkpoints, self.every, self.epochs = checkpoints, every, epochs
    self.key_data, self.best = key_data, best

  def after_epoch(self, epoch: Epoch) -> None:
    last = epoch.number == self.epochs or epoch.history.stopped_early
    if epoch.number % self.every and not last:
      return
    state = {"params": epoch.params, "opt_state": epoch.opt_state}
    if self.best is not None:
      state["best_params"] = self.best.best_params
    meta = {"epoch": epoch.number, "history": epoch.history.to_dict(),
            "key": self.key_data}
    self.checkpoints.save(
        epoch.number, {k: jax.tree.leaves(t) for k, t in state.items()}, meta)
