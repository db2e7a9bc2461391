"""Joining a multi-process JAX job (`jax.distributed.initialize`) from the command line.

  --distributed                      TPU pod slices and SLURM: JAX finds the coordinator,
                                     process count and id in the environment
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                                     anything else (several processes on one machine, a
                                     cluster without auto-detection); the launchers set these

On the 'cpu' platform the processes talk through gloo (CPU collectives). A coordinator
that does not answer within `timeout_s` is a one-line error naming it (processes other
than 0 look for it before XLA would abort them).
"""
from __future__ import annotations

import socket
import time

import jax


def wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  """Return once something listens at host:port; ConnectionError after `timeout_s`."""
  deadline = time.time() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      if time.time() >= deadline:
        raise ConnectionError(
            f"no JAX coordinator at {host}:{port} after {timeout_s:g} s ({e.strerror or e}): "
            f"is process 0 running, and is {host} reachable from this host?") from None
      time.sleep(0.5)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               platform: str = "cpu", timeout_s: int = 300,
               heartbeat_timeout_s: int = 100) -> None:
  """jax.distributed.initialize with the given (or auto-detected) layout; ValueError for an
  inconsistent one, ConnectionError naming the coordinator when it cannot be reached.
  A process not heard from for `heartbeat_timeout_s` ends the others (XLA aborts them; the
  launchers stop the whole job as soon as one process fails)."""
  explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
  if explicit:
    if not coordinator_address or num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address, --num_processes and --process_id go together "
                       f"(got {coordinator_address!r}, {num_processes}, {process_id})")
    if process_id >= num_processes:
      raise ValueError(f"--process_id={process_id} must be below --num_processes="
                       f"{num_processes}")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
    if process_id > 0:   # XLA aborts the process when the coordinator is not there: ask first
      wait_for_coordinator(host, int(port), timeout_s)
  if platform == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                process_id=process_id) if explicit else {}
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s, **kwargs)
  except Exception as e:  # noqa: BLE001 -- XLA's errors are long; say what was tried
    where = coordinator_address or "the coordinator found in the environment"
    raise ConnectionError(f"could not join the JAX job at {where} within {timeout_s} s "
                       f"(process {process_id} of {num_processes}): "
                       f"{str(e).strip().splitlines()[0]}") from None
