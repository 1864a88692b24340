r"""Vocab-parallel softmax: equal losses, per-device memory falling as 1/P.

Command: ``python experiments/sharded_vocab.py`` (8 simulated CPU devices;
on a host with GPUs, its GPUs). Smoke test: ``--quick``. Several processes:
``python experiments/sharded_vocab.py --num-processes 2``. Every ``Config``
field is a flag; ``run(config)`` is the single-process measurement, while the
multi-process mode, which starts processes, is the command line's alone.

Expected (default mode, B = 128 rows, d = 64 features, K = 131072 and
1,000,000 classes, float32, Adam, P = 1, 2, 4, 8 devices on the "model"
axis): the loss of :func:`jaxsoftmax.sharded.vocab_parallel_cross_entropy`
equals single-device :func:`jaxsoftmax.fused_linear_cross_entropy` (the
same float32 number here) and its gradients agree to <= 5e-7 of their
largest entry. Per device, ``w`` takes d·K/P·4 bytes (244 MiB at K = 10^6,
P = 1; 30.5 MiB at P = 8), Adam's state twice that, and XLA's temporaries
of the compiled training step fall exactly as 1/P (977 MiB -> 122 MiB at
K = 10^6: the [B, K/P] logit block, the [d, K/P] gradient and the update).
Step times do not fall on simulated devices: the eight share the machine's
cores, so they show overhead, not speed-up. About 4 minutes of CPU time
(peak memory 6.4 GB, at K = 10^6); ``--quick`` about 15 s.

Multi-process mode (``--num-processes N``): launches N local processes
(``127.0.0.1``, a free port, ``--devices-per-process`` simulated devices
each), which call ``jax.distributed.initialize`` with gloo collectives and
train one class-sharded softmax regression together with
:func:`jaxsoftmax.fit` on a ("data", "model") mesh whose "model" axis spans
the processes. The launcher then trains the same model on one device with
``fused_linear_cross_entropy`` and compares the loss sequences (float32,
rtol 1e-5). About 30 s for 2 processes.

Faults: the launcher watches every worker; when one exits non-zero it kills
the others and exits 1 within a second, naming the worker and its exit
code. A worker run without the launcher ends itself within a minute of
losing a peer (a failed collective at once, a missed heartbeat after 10 s,
a peer absent at start-up after 20 s of waiting).

How memory is measured: ``jit(step).lower(...).compile().memory_analysis()``
of the sharded step. XLA compiles one SPMD program that every device runs,
so the figures are per device (argument bytes at P = 8 are an eighth of
those at P = 1); with simulated CPU devices all of them share the host's
RAM, so the host holds P times that.

Figures go to ``results/sharded_vocab.json`` (``--quick``:
``results/sharded_vocab_quick.json``; multi-process:
``results/sharded_vocab_multiprocess[_quick].json``).

References:
  M. Shoeybi et al., "Megatron-LM: training multi-billion parameter language
  models using model parallelism", arXiv:1909.08053 (2019), the
  vocab-parallel cross-entropy.
"""

from __future__ import annotations

import os

# Simulated CPU devices must be requested before jax is imported; the
# multi-process workers get their own count from the launcher.
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}=8"
  ).strip()

import argparse  # noqa: E402
from collections.abc import Sequence  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsoftmax as js  # noqa: E402
from jaxsoftmax import reporting  # noqa: E402
from jaxsoftmax import sharded  # noqa: E402

import _cli  # noqa: E402

CLASS_SPLIT = {"w": P(None, "model"), "b": P("model")}
DEVICE_COUNTS = (1, 2, 4, 8)
LEARNING_RATE = 1e-2
# float32, summed in another order: the loss to ~1e-7, gradients to ~1e-6
# of their largest entry; the bars leave an order of magnitude.
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
MEMORY_TOLERANCE = 0.10  # the 1/P target, from the issue
RESULT_TAG = "RESULT "
# Messages a worker prints when another program took the coordinator port
# between our probe and its bind: then the launcher retries on a new port.
PORT_TAKEN = ("address already in use", "failed to bind", "bind failed")
# A worker whose peer died ends itself within a minute: a collective with the
# dead peer fails at once, the coordination service declares a process dead
# after HEARTBEAT_S without a heartbeat and stops the others, and a peer that
# never arrives ends start-up after STARTUP_S (plus the ~10 s it takes a
# loaded 2-core machine to import jax).
HEARTBEAT_S = 10
SHUTDOWN_S = 10
STARTUP_S = 20


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes, and the multi-process mode's processes, steps and deadline.

  ``batch``, ``features``, ``classes`` and ``repeats`` left None follow the
  mode (see ``resolved``).
  """

  batch: int | None = dataclasses.field(
      default=None, metadata={"help": "rows B (128; --quick 32)"})
  features: int | None = dataclasses.field(
      default=None, metadata={"help": "features d (64; --quick 16)"})
  classes: tuple[int, ...] | None = dataclasses.field(
      default=None, metadata={"help": "class counts K (131072 1000000)"})
  repeats: int | None = dataclasses.field(
      default=None, metadata={"help": "timed steps per P (3; --quick 2)"})
  num_processes: int = dataclasses.field(
      default=1, metadata={"help": "> 1: the multi-process mode"})
  devices_per_process: int = 4
  steps: int = dataclasses.field(
      default=5, metadata={"help": "training steps in the multi-process mode"})
  seed: int = 0
  timeout: int = dataclasses.field(
      default=300, metadata={"help": "seconds before the workers are killed"})
  worker: int | None = dataclasses.field(
      default=None, metadata={"help": argparse.SUPPRESS})
  port: int | None = dataclasses.field(
      default=None, metadata={"help": argparse.SUPPRESS})
  quick_mode: bool = False

  def __post_init__(self):
    for name in ("batch", "features", "repeats", "num_processes",
                 "devices_per_process", "steps", "timeout"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if self.classes is not None and (not self.classes
                                     or min(self.classes) < 1):
      raise ValueError(f"classes must be positive counts, got {self.classes}")

  @property
  def multi_process(self) -> bool:
    return self.num_processes > 1 or self.worker is not None

  def quick(self) -> Config:
    """Tiny sizes, for the smoke test."""
    return dataclasses.replace(self, quick_mode=True)

  def resolved(self) -> Config:
    """The None sizes set for the mode: quick or not, multi-process or not."""
    if self.quick_mode:
      sizes = (32, 16, (512,) if self.multi_process else (4096,), 2)
    else:
      sizes = (128, 64, (4096,) if self.multi_process else (131072, 1_000_000),
               3)
    names = ("batch", "features", "classes", "repeats")
    return dataclasses.replace(self, **{
        n: v for n, v in zip(names, sizes) if getattr(self, n) is None})


def make_problem(seed: int, batch: int, features: int, classes: int):
  """Features, labels and a linear layer as NumPy float32 (same everywhere)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, features), dtype=np.float32)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  w = rng.standard_normal((features, classes), dtype=np.float32)
  w /= np.float32(np.sqrt(features))
  return x, y, {"w": w, "b": np.zeros(classes, np.float32)}


def single_device_loss(params, x, y):
  return js.fused_linear_cross_entropy(x, params["w"], params["b"], y)


# ----------------------------------------------------------------------------
# Default mode: equality, per-device memory and step time against P.
# ----------------------------------------------------------------------------


def _relative_errors(value, grads, ref_value, ref_grads) -> tuple[float, float]:
  loss_err = abs(float(value) - float(ref_value)) / abs(float(ref_value))
  grad_err = max(
      float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
      for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
  )
  return loss_err, grad_err


def _device0_bytes(tree: Any) -> int:
  """Bytes of ``tree`` held by the first device (each leaf's first shard)."""
  return sum(
      leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree)
  )


def measure_size(
    batch: int, features: int, classes: int, devices: Sequence[Any],
    repeats: int,
) -> list[dict[str, Any]]:
  """One row per device count P: errors, per-device bytes, step time."""
  x, y, params = make_problem(0, batch, features, classes)
  ref_value, ref_grads = jax.jit(jax.value_and_grad(single_device_loss))(
      params, x, y)
  optimizer = optax.adam(LEARNING_RATE)
  rows, runners = [], {}
  for p in [p for p in DEVICE_COUNTS if p <= len(devices)]:
    mesh = jax.make_mesh((p,), ("model",), devices=devices[:p])

    def loss(params, x, y, mesh=mesh):
      return sharded.vocab_parallel_cross_entropy(
          x, params["w"], params["b"], y, mesh=mesh)

    def step(params, state, x, y, loss=loss):
      value, grads = jax.value_and_grad(loss)(params, x, y)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state, value

    placed = sharded.shard_params(params, mesh, CLASS_SPLIT)
    xs, ys = sharded.shard_params((x, y), mesh)
    with jax.set_mesh(mesh):
      state = jax.jit(optimizer.init)(placed)
      memory = reporting.compiled_memory(step, placed, state, xs, ys)
      value, grads = jax.jit(jax.value_and_grad(loss))(placed, xs, ys)
    loss_err, grad_err = _relative_errors(value, grads, ref_value, ref_grads)
    del grads
    rows.append({
        "classes": classes, "devices": p, "batch": batch,
        "features": features, "loss": float(value),
        "loss_rel_err": loss_err, "grad_rel_err": grad_err,
        "w_bytes_per_device": _device0_bytes(placed["w"]),
        "opt_state_bytes_per_device": _device0_bytes(state),
        "memory_per_device": memory,
    })
    runners[p] = _runner(jax.jit(step, donate_argnums=(0, 1)), mesh,
                         placed, state, xs, ys)
  times = reporting.alternate(runners, repeats=repeats)
  base = rows[0]
  for row in rows:
    p = row["devices"]
    row["step_ms"] = 1e3 * reporting.median(times[p])
    row["w_bytes_x_P_over_P1"] = (
        row["w_bytes_per_device"] * p / base["w_bytes_per_device"])
    temp = row["memory_per_device"]["temp"]
    row["temp_x_P_over_P1"] = temp * p / base["memory_per_device"]["temp"]
  return rows


def _runner(step, mesh, params, state, x, y):
  """A zero-argument training step that carries its donated state along."""
  carry = [params, state]

  def run():
    with jax.set_mesh(mesh):
      carry[0], carry[1], value = step(carry[0], carry[1], x, y)
    return value

  return run


def run(config: Config) -> dict[str, Any]:
  """The single-process mode: per (K, P) errors, per-device bytes, times."""
  config = config.resolved()
  devices = jax.devices()
  rows, seconds = [], {}
  for classes in config.classes:
    t0 = time.perf_counter()
    rows += measure_size(config.batch, config.features, classes, devices,
                         config.repeats)
    seconds[classes] = time.perf_counter() - t0
  equal = all(r["loss_rel_err"] <= LOSS_RTOL and r["grad_rel_err"] <= GRAD_RTOL
              for r in rows)
  scales = all(
      abs(r[key] - 1) <= MEMORY_TOLERANCE
      for r in rows for key in ("w_bytes_x_P_over_P1", "temp_x_P_over_P1")
  )
  return {
      "config": _config(config),
      "devices": f"{len(devices)} {devices[0].platform} devices"
                 f" ({devices[0].device_kind})",
      "load_average": os.getloadavg(),
      "seconds_per_size": seconds,
      "rows": rows,
      "targets": {"equal_to_single_device": equal, "memory_scales": scales},
  }


def report(results: dict[str, Any]) -> None:
  """Prints the single-process mode's table and targets."""
  config = results["config"]
  print(f"{results['devices']}; B = {config['batch']}, d ="
        f" {config['features']}")
  for classes, seconds in results["seconds_per_size"].items():
    print(f"K = {classes}: {seconds:.1f} s")
  table = [{
      "K": r["classes"], "P": r["devices"],
      "w/dev": reporting.format_bytes(r["w_bytes_per_device"]),
      "Adam/dev": reporting.format_bytes(r["opt_state_bytes_per_device"]),
      "temp/dev": reporting.format_bytes(r["memory_per_device"]["temp"]),
      "args/dev": reporting.format_bytes(r["memory_per_device"]["argument"]),
      "w·P/w(1)": r["w_bytes_x_P_over_P1"],
      "temp·P/temp(1)": r["temp_x_P_over_P1"],
      "loss rel err": r["loss_rel_err"], "grad rel err": r["grad_rel_err"],
      "step ms": r["step_ms"],
  } for r in results["rows"]]
  print(reporting.format_table(table, list(table[0])))
  targets = results["targets"]
  print(f"sharded loss and gradients equal the single-device fused loss"
        f" (loss rtol {LOSS_RTOL}, grad rtol {GRAD_RTOL}):"
        f" {targets['equal_to_single_device']}")
  print(f"per-device w and XLA temporaries fall as 1/P within"
        f" {MEMORY_TOLERANCE:.0%}: {targets['memory_scales']}")


# ----------------------------------------------------------------------------
# Multi-process mode: a launcher and its workers.
# ----------------------------------------------------------------------------


def _mesh_over_processes() -> Mesh:
  """A ("data", "model") mesh whose "model" axis spans the processes.

  ``jax.devices()`` lists the devices process by process; taking every
  other device for each "data" row puts devices of all processes on one
  "model" row, so the normalizer's pmax/psum cross process boundaries.
  """
  devices = np.asarray(jax.devices())
  data = 2 if devices.size % 2 == 0 else 1
  return Mesh(devices.reshape(-1, data).T, ("data", "model"),
              axis_types=(jax.sharding.AxisType.Explicit,) * 2)


def train_losses(config: Config, mesh: Mesh | None) -> list[float]:
  """Per-step training losses of full-batch Adam, sharded over ``mesh``."""
  x, y, params = make_problem(config.seed, config.batch, config.features,
                              config.classes[0])
  if mesh is None:
    loss, options = single_device_loss, {}
  else:
    def loss(params, x, y):
      return sharded.vocab_parallel_cross_entropy(
          x, params["w"], params["b"], y, mesh=mesh, data_axis_name="data")
    options = {"mesh": mesh, "param_specs": CLASS_SPLIT}
  # One full batch per epoch: the history's epoch losses are step losses.
  _, history = js.fit(
      loss, params, (x, y), optimizer=optax.adam(LEARNING_RATE),
      epochs=config.steps, batch_size=config.batch,
      key=jax.random.key(config.seed),
      progress=False, **options)
  return history.loss


def run_worker(config: Config) -> int:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{config.port}",
      num_processes=config.num_processes, process_id=config.worker,
      initialization_timeout=min(config.timeout, STARTUP_S),
      heartbeat_timeout_seconds=HEARTBEAT_S,
      shutdown_timeout_seconds=SHUTDOWN_S,
  )
  print(f"worker {config.worker}: connected", flush=True)
  mesh = _mesh_over_processes()
  try:
    losses = train_losses(config, mesh)
  except jax.errors.JaxRuntimeError as error:
    print(f"worker {config.worker}: a collective failed, so another worker has"
          f" probably died; stopping. ({error})", file=sys.stderr, flush=True)
    # The orderly jax.distributed.shutdown waits at a barrier the dead peer
    # never reaches and then aborts with a C++ stack trace.
    os._exit(1)
  print(RESULT_TAG + json.dumps({
      "process": jax.process_index(), "losses": losses,
      "mesh": dict(mesh.shape), "local_devices": jax.local_device_count(),
      "global_devices": jax.device_count(),
  }), flush=True)
  jax.distributed.shutdown()
  return 0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_command(config: Config, port: int, worker: int) -> list[str]:
  """The command line that starts worker ``worker`` of the launcher's run."""
  return [
      sys.executable, __file__, "--worker", str(worker),
      "--num-processes", str(config.num_processes), "--port", str(port),
      "--batch", str(config.batch), "--features", str(config.features),
      "--classes", str(config.classes[0]), "--steps", str(config.steps),
      "--seed", str(config.seed), "--timeout", str(config.timeout),
  ]


def _worker_env(devices_per_process: int) -> dict[str, str]:
  """The environment of a worker: its own count of simulated devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith(_DEVICE_FLAG)]
      + [f"{_DEVICE_FLAG}={devices_per_process}"])
  return env


def _launch(
    config: Config, port: int,
) -> tuple[list[tuple[int | None, str]], str | None]:
  """Runs the workers; (return code, output) of each, and why it stopped.

  Every worker is watched: the first one to exit non-zero (or the
  deadline) gets the others killed, since they would wait for it in a
  collective. The reason is ``None`` when all of them succeeded.
  """
  env = _worker_env(config.devices_per_process)
  outputs = [tempfile.TemporaryFile(mode="w+") for _ in
             range(config.num_processes)]
  procs = [
      subprocess.Popen(_worker_command(config, port, i), env=env, stdout=out,
                       stderr=subprocess.STDOUT)
      for i, out in enumerate(outputs)
  ]
  for i, p in enumerate(procs):
    print(f"worker {i}: pid {p.pid}", flush=True)
  deadline = time.monotonic() + config.timeout
  reason = None
  try:
    while reason is None:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        reason = f"worker {i} exited with code {code}{_signal_name(code)}"
      elif all(c == 0 for c in codes):
        break
      elif time.monotonic() > deadline:
        reason = f"no result after --timeout {config.timeout} s"
      else:
        time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  results = []
  for p, out in zip(procs, outputs):
    out.seek(0)
    results.append((p.returncode, out.read()))
    out.close()
  return results, reason


def _signal_name(code: int) -> str:
  """`` (SIGKILL)`` for the negative return code of a killed process."""
  return f" ({signal.Signals(-code).name})" if code < 0 else ""


def run_launcher(config: Config) -> int:
  print(f"launching {config.num_processes} processes x"
        f" {config.devices_per_process} simulated CPU devices (gloo);"
        f" B = {config.batch}, d = {config.features}, K = {config.classes[0]},"
        f" {config.steps} Adam steps")
  t0 = time.perf_counter()
  for attempt in range(3):
    port = _free_port()
    results, reason = _launch(config, port)
    texts = "\n".join(out for _, out in results).lower()
    if reason is None:
      break
    if not any(s in texts for s in PORT_TAKEN) or attempt == 2:
      for i, (code, out) in enumerate(results):
        print(f"--- worker {i} (exit {code}) ---\n{out[-4000:]}")
      print(f"FAILED: {reason}; the other workers were stopped",
            file=sys.stderr, flush=True)
      return 1
    print(f"port {port} was taken; retrying on another")
  multi = [json.loads(line[len(RESULT_TAG):])
           for _, out in results for line in out.splitlines()
           if line.startswith(RESULT_TAG)]
  seconds_multi = time.perf_counter() - t0
  t0 = time.perf_counter()
  single = train_losses(config, None)
  seconds_single = time.perf_counter() - t0

  losses = multi[0]["losses"]
  agree_processes = all(m["losses"] == losses for m in multi)
  rel = [abs(a - b) / abs(b) for a, b in zip(losses, single)]
  equal = agree_processes and max(rel) <= LOSS_RTOL
  print(f"mesh {multi[0]['mesh']} over {multi[0]['global_devices']} devices"
        f" in {len(multi)} processes ({multi[0]['local_devices']} local each)")
  print(reporting.format_table(
      [{"step": i + 1, f"{len(multi)} processes": a, "1 device": b,
        "rel diff": r} for i, (a, b, r) in enumerate(zip(losses, single, rel))],
      ["step", f"{len(multi)} processes", "1 device", "rel diff"]))
  print(f"all processes report the same losses: {agree_processes}")
  print(f"multi-process losses equal the single-device run (rtol"
        f" {LOSS_RTOL}): {equal}")
  print(f"wall time: {seconds_multi:.1f} s (processes),"
        f" {seconds_single:.1f} s (single device)")
  path = reporting.save_results(
      "sharded_vocab_multiprocess_quick" if config.quick_mode
      else "sharded_vocab_multiprocess",
      {"config": _config(config), "multi_process_losses": losses,
       "single_device_losses": single, "relative_differences": rel,
       "processes_agree": agree_processes, "equal": equal,
       "mesh": multi[0]["mesh"], "seconds_multi_process": seconds_multi,
       "seconds_single_device": seconds_single,
       "load_average": os.getloadavg()},
  )
  print(f"wrote {path}")
  return 0 if equal else 1


def _config(config: Config) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(config).items()
          if k not in ("worker", "port")}


def main(argv: Sequence[str] | None = None) -> int:
  config = _cli.parse(Config, argv, description=__doc__.splitlines()[0])
  config = config.resolved()
  if config.worker is not None:
    return run_worker(config)
  if config.num_processes > 1:
    return run_launcher(config)
  results = run(config)
  report(results)
  path = reporting.save_results(
      "sharded_vocab_quick" if config.quick_mode else "sharded_vocab",
      results)
  print(f"wrote {path}")
  return 0 if results["targets"]["equal_to_single_device"] else 1


if __name__ == "__main__":
  sys.exit(main())
