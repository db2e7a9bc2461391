"""Host memory for XLA:CPU: reuse one heap across steps, give back what compilation left.

XLA:CPU allocates its temporary and output buffers with malloc on every execution (one
block of several GB for a G+R training step). glibc serves blocks that large with fresh
mmap'd pages and unmaps them on free, so every step page-faults its whole working set
again: on the 2-core VMs this project is measured on, ~1 us per 4 KiB fault, and the G+R
step spent 3-5 CPU-seconds of each ~12 s step in the kernel (4-16k faults per step even
with transparent huge pages). Two sets of glibc tunables:

* every process: transparent huge pages for malloc (`hugetlb=1`);
* steps with large buffers (`large_step`, e.g. G+R at 256 x 256): one heap that is
  never trimmed (`mmap_max=0`, `arena_max=1`, a huge `trim_threshold`). The step then
  takes no page faults after the first (measured: sys time 3-5 s -> 0.15 s per step).
  Not for small steps: with one arena the demo's 0.2 s step took 0.35 s (malloc lock
  contention between XLA's threads outweighs the faults it saves).

The price of the second set is that freed memory stays resident; `release_free_memory()`
(glibc's `malloc_trim`) gives it back and is called where much was just freed: after the
train state is built and after each step function is compiled (XLA's compiler frees
~2 GB for the G+R step), before the step's buffers are first allocated.

The tunables are read when the process starts, so entry points call
`reexec_with_malloc_tunables` first; it restarts the same command line once with them
added. Tunables the user already set are kept. Set MERGEVQ_MALLOC_TUNING=0 to opt out.
Nothing changes on non-glibc systems.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

TUNABLES = {"glibc.malloc.hugetlb": "1"}      # madvise transparent huge pages (glibc >= 2.35)
ONE_HEAP = {                                    # for steps with large buffers
    "glibc.malloc.mmap_max": "0",               # large blocks from the heap, not mmap
    "glibc.malloc.arena_max": "1",              # one heap for every thread
    "glibc.malloc.trim_threshold": str(1 << 40),  # never shrink it on free
}
OPT_OUT = "MERGEVQ_MALLOC_TUNING"
LARGE_STEP_PIXELS = 4 * 256 * 256   # images x pixels per step from which ONE_HEAP pays off


def large_step(image_size: int, batch: int) -> bool:
  """Whether a training step over `batch` images of `image_size`^2 wants ONE_HEAP."""
  return batch * image_size * image_size >= LARGE_STEP_PIXELS


def _is_glibc() -> bool:
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _missing(env, large: bool) -> dict[str, str]:
  """The tunables not yet set in env's GLIBC_TUNABLES."""
  if not _is_glibc() or env.get(OPT_OUT, "1") == "0":
    return {}
  wanted = {**TUNABLES, **(ONE_HEAP if large else {})}
  present = {item.split("=", 1)[0] for item in env.get("GLIBC_TUNABLES", "").split(":")}
  return {k: v for k, v in wanted.items() if k not in present}


def malloc_env(env=None, large: bool = False) -> dict:
  """A copy of `env` (default os.environ) with the tunables added where they apply;
  `large`: also ONE_HEAP."""
  env = dict(os.environ if env is None else env)
  missing = _missing(env, large)
  if missing:
    added = [f"{k}={v}" for k, v in missing.items()]
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), *added]))
  return env


def reexec_with_malloc_tunables(large: bool = False) -> None:
  """Restart this process (same interpreter and arguments) with the tunables, once."""
  if _missing(os.environ, large):
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), malloc_env(large=large))


def release_free_memory() -> bool:
  """Return freed heap pages to the OS (glibc malloc_trim). True if glibc did so."""
  if not _is_glibc():
    return False
  return bool(ctypes.CDLL(None).malloc_trim(0))
