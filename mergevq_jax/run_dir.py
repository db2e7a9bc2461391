"""A run directory, kept the way a database keeps its data files: one writer at a time, and a
config that never changes under its checkpoints.

  <workdir>/lock                  the holder (JSON: pid, host, start time, command line),
                                  flock-ed while a job runs: a second job on the same run is
                                  refused, and the lock of a job that died is free again
  <workdir>/config.json           the config the run started with; never rewritten once a
                                  checkpoint exists
  <workdir>/config_history.jsonl  append-only, one line per start: time, host, step, and
                                  the keys that differ from config.json (new steps, lr,
                                  batch, data path...)

A resume may change anything but the architecture (`ARCHITECTURE` below): a changed
architecture key is a one-line error naming each key and both values, before anything is
written. `load_config(workdir)` is config.json with the latest start's changes applied.

The workdir may be local or in an object store (gs://...): files go through
`mergevq_jax.files`, and the lock is an flock locally, a lease renewed by a heartbeat
remotely.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import jax
import ml_collections
from absl import logging

from mergevq_jax import files

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = "lock"
# Sections a checkpoint depends on (the weights' shapes and what they compute), and the
# stage...
ARCHITECTURE = ("model.", "disc.")
# ...except these keys, which choose how the same weights run.
MAY_CHANGE = ("model.num_keep", "model.keep_candidates", "model.keep_probs",
              "model.attention_impl", "model.remat")


class RunInUse(ValueError):
  """Another live job holds the run directory."""


def check_workdir(workdir: str) -> None:
  """ValueError when `workdir` cannot be a run directory (a file, or under a file)."""
  path = files.path(workdir)
  if not files.is_local(path):
    if path.is_file():
      raise ValueError(f"--workdir={workdir} is a file, not a directory")
    return
  while not path.exists() and path.parent != path:
    path = path.parent
  if not path.is_dir():
    raise ValueError(f"--workdir={workdir}: {path} is a file, not a directory")


def _json_config(config) -> dict:
  """The config as plain JSON values (tuples as lists), as stored in config.json."""
  return json.loads(config.to_json_best_effort())


def _tuples(tree):
  """JSON lists back to tuples (configs use tuples for sequences)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_changes(stored: dict, requested: dict) -> dict[str, list]:
  """{dotted key: [stored value, requested value]} for every key that differs (a key on
  one side only has None on the other)."""
  a, b = _flat(stored), _flat(requested)
  return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def architecture_keys(changes: dict) -> dict[str, list]:
  return {k: v for k, v in changes.items() if k == "stage" or (
      k.startswith(ARCHITECTURE) and k not in MAY_CHANGE)}


def read_stored_config(workdir: str) -> dict | None:
  """config.json as JSON values, or None for a new run directory."""
  path = files.path(workdir) / CONFIG_FILE
  return files.read_json(path) if path.is_file() else None


def read_history(workdir: str) -> list[dict]:
  path = files.path(workdir) / HISTORY_FILE
  if not path.is_file():
    return []
  return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def _set(tree: dict, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config: config.json with the latest start's changes (config_history)."""
  stored = read_stored_config(workdir)
  if stored is None:
    raise ValueError(f"{files.join(workdir, CONFIG_FILE)} not found: {workdir!r} is not a "
                     f"mergevq_jax run directory")
  history = read_history(workdir)
  for key, (_, new) in (history[-1].get("changes", {}) if history else {}).items():
    _set(stored, key, new)
  return config_from_json(stored)


def config_from_json(stored: dict) -> ml_collections.ConfigDict:
  """A config read back from JSON (config.json of a run or of an export)."""
  return ml_collections.ConfigDict(_tuples(stored))


def save_config(workdir: str, config) -> None:
  """Write <workdir>/config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  files.write_text(files.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=1))


def _describe(changes: dict) -> str:
  return "; ".join(f"{k}={old!r} in the run, {new!r} requested" for k, (old, new) in
                   changes.items())


def check_resumable(workdir: str, config, step: int) -> dict[str, list]:
  """The requested config's changes against the stored one (for config_history); a
  ValueError naming every changed architecture key when the run at `step` cannot resume
  with it. Nothing is written."""
  stored = read_stored_config(workdir)
  if stored is None:
    return {}
  changes = config_changes(stored, _json_config(config))
  arch = architecture_keys(changes)
  if arch:
    raise ValueError(
        f"--workdir={workdir} holds a run (checkpoint of step {step}) of another "
        f"architecture: {_describe(arch)}. Resume with the run's own values "
        f"({files.join(workdir, CONFIG_FILE)}) or start a new --workdir")
  return changes


def record_start(workdir: str, config, step: int, resumed: bool) -> None:
  """A new run (no checkpoint yet) writes config.json; every start appends its line to
  config_history.jsonl (process 0 only)."""
  if jax.process_index() != 0:
    return
  stored = read_stored_config(workdir) if resumed else None
  if stored is None:
    save_config(workdir, config)
  changes = config_changes(stored, _json_config(config)) if stored is not None else {}
  entry = {"time": _now(), "host": socket.gethostname(), "pid": os.getpid(),
           "step": int(step), "event": "resume" if resumed else "start", "changes": changes}
  files.append_text(files.join(workdir, HISTORY_FILE), json.dumps(entry) + "\n")


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# Locks this process holds: lock path -> [handle, depth]. Re-entrant, so the main job and
# the stage it runs can both take the run's lock.
_HELD: dict[str, list] = {}


def _my_record() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
          "command": " ".join(sys.argv)}


def _parse_holder(data: bytes) -> dict:
  """The holder record in a lock file ({} when empty: free, or released cleanly)."""
  if not data.strip():
    return {}
  try:
    return json.loads(data)
  except ValueError:
    return {"unreadable lock file": data[:80].decode(errors="replace")}


def _who(holder: dict) -> str:
  if "pid" not in holder:
    return f"another process ({holder or 'it has not written its record yet'})"
  return (f"pid {holder['pid']} on host {holder.get('host')} since {holder.get('started')} "
          f"(`{holder.get('command', '')}`)")


class RunLock:
  """`with RunLock(workdir):` -- the job's exclusive hold of a run directory (process 0).

  A second job on a held run gets `RunInUse` naming the holder; the lock of a holder that
  died (kill -9, a crashed host) is free and is taken over with a warning. A local run is
  held with flock (the kernel frees it when the holder dies); a run in an object store with
  a lease: the holder rewrites its record every `LEASE_RENEW_S`, and a record not renewed
  for `LEASE_EXPIRY_S` belongs to a dead job.
  """

  LEASE_RENEW_S = 20.0
  LEASE_EXPIRY_S = 90.0
  LEASE_SETTLE_S = 2.0   # wait after writing a lease, then read it back: one of two wins

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = files.path(workdir) / LOCK_FILE
    self.key = os.path.realpath(self.path) if files.is_local(workdir) else os.fspath(self.path)

  def __enter__(self) -> "RunLock":
    if jax.process_index() != 0:
      return self
    check_workdir(self.workdir)
    if self.key in _HELD:
      _HELD[self.key][1] += 1
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    handle = self._flock() if files.is_local(self.workdir) else self._lease()
    _HELD[self.key] = [handle, 1]
    return self

  def __exit__(self, *exc) -> None:
    if jax.process_index() != 0:
      return
    held = _HELD.get(self.key)
    if held is None:
      return
    held[1] -= 1
    if held[1] == 0:
      del _HELD[self.key]
      if isinstance(held[0], int):
        os.ftruncate(held[0], 0)   # empty: released cleanly (the file stays)
        fcntl.flock(held[0], fcntl.LOCK_UN)
        os.close(held[0])
      else:
        held[0].release()

  def _in_use(self, holder: dict, detail: str = "") -> RunInUse:
    return RunInUse(f"--workdir={self.workdir} is in use by {_who(holder)}{detail}; a second "
                    f"job would corrupt its checkpoints and logs. Wait for it, stop it, or "
                    f"use another --workdir")

  def _taking_over(self, previous: dict, why: str) -> None:
    message = f"{self.path}: taking over the lock of {_who(previous)}, {why}"
    logging.warning(message)
    print(f"warning: {message}", file=sys.stderr)

  def _flock(self) -> int:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _parse_holder(os.pread(fd, 65536, 0))
      for _ in range(20):  # a holder that has just taken the lock writes its record next
        if holder:
          break
        time.sleep(0.1)
        holder = _parse_holder(os.pread(fd, 65536, 0))
      os.close(fd)
      raise self._in_use(holder) from None
    previous = _parse_holder(os.pread(fd, 65536, 0))
    if previous:
      self._taking_over(previous, "which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_my_record()).encode(), 0)
    os.fsync(fd)
    return fd

  def _read_lease(self) -> dict:
    return _parse_holder(self.path.read_bytes()) if self.path.exists() else {}

  def _lease(self) -> "_Lease":
    previous = self._read_lease()
    if previous:
      age = time.time() - float(previous.get("renewed", 0))
      if age < self.LEASE_EXPIRY_S:
        raise self._in_use(previous, f" (lease renewed {age:.0f} s ago)")
      self._taking_over(previous, f"whose lease was last renewed {age:.0f} s ago")
    lease = _Lease(self.path, {**_my_record(), "token": uuid.uuid4().hex}, self.LEASE_RENEW_S)
    lease.write()
    time.sleep(self.LEASE_SETTLE_S)
    holder = self._read_lease()
    if holder.get("token") != lease.record["token"]:   # another job wrote after us: it wins
      raise self._in_use(holder)
    lease.start()
    return lease


class _Lease:
  """A lease record in an object store, rewritten every `renew_s` by a daemon thread."""

  def __init__(self, path, record: dict, renew_s: float):
    self.path, self.record, self.renew_s = path, record, renew_s
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._renew, daemon=True, name="run-lock-lease")

  def write(self) -> None:
    files.write_text(self.path, json.dumps({**self.record, "renewed": time.time()}))

  def start(self) -> None:
    self.thread.start()

  def _renew(self) -> None:
    while not self.stopped.wait(self.renew_s):
      try:
        self.write()
      except Exception as e:  # noqa: BLE001 -- a transient store error: try again later
        logging.warning("could not renew the run lock %s: %s", self.path, e)

  def release(self) -> None:
    self.stopped.set()
    if self.thread.is_alive():
      self.thread.join()
    files.write_text(self.path, "")   # empty: released cleanly


def compilation_cache_dir(flag: str, platform: str, workdir: str) -> str:
  """The persistent XLA compilation cache directory for main's --compilation_cache ('' =
  none): 'auto' is <workdir>/xla_cache on gpu and tpu, where a G+R step compiles for
  minutes per K, and none on cpu; JAX_COMPILATION_CACHE_DIR, when set, wins (JAX reads
  it itself)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return ""
  if flag == "auto":
    return files.join(workdir, "xla_cache") if platform != "cpu" else ""
  return flag
