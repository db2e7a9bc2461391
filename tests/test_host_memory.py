"""The malloc tunables are added once, keep the user's own, respect opt-out, survive
re-exec; malloc_trim gives freed heap pages back."""
import os
import platform
import subprocess
import sys

import pytest

from mergevq_jax import host_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.platform != "linux",
                           reason="glibc tunables")
ALL = ":".join(f"{k}={v}" for k, v in {**host_memory.TUNABLES, **host_memory.ONE_HEAP}.items())


@glibc
def test_malloc_env_adds_the_tunables_once_and_keeps_the_users():
  small = host_memory.malloc_env({})
  assert small["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = host_memory.malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, large=True)
  items = env["GLIBC_TUNABLES"].split(":")
  assert items[0] == "glibc.malloc.arena_max=2"             # the user's value wins
  assert sorted(i.split("=")[0] for i in items) == sorted(
      {**host_memory.TUNABLES, **host_memory.ONE_HEAP})
  assert host_memory.malloc_env(env, large=True) == env
  assert host_memory.large_step(256, 4) and not host_memory.large_step(64, 8)
  assert "GLIBC_TUNABLES" not in host_memory.malloc_env({host_memory.OPT_OUT: "0"})


@glibc
def test_reexec_restarts_with_the_tunables_and_the_same_arguments():
  code = ("import os, sys; from mergevq_jax import host_memory; "
          "host_memory.reexec_with_malloc_tunables(large=True); "
          "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
  out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out[0] == ALL
  assert " ".join(out[1:]) == "['a', '--b=1']"


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


@glibc
def test_release_free_memory_returns_freed_heap_pages_under_the_tunables():
  # Under the tunables a freed 256 MB block stays resident until malloc_trim.
  code = ("import ctypes, sys; sys.path.insert(0, %r); import test_host_memory as t; "
          "from mergevq_jax import host_memory; libc = ctypes.CDLL(None); "
          "libc.malloc.restype = ctypes.c_void_p; n = 256 << 20; p = libc.malloc(n); "
          "ctypes.memset(p, 1, n); q = libc.malloc(64); libc.free(ctypes.c_void_p(p)); "
          "a = t._rss_mb(); host_memory.release_free_memory(); print(a - t._rss_mb())"
          % os.path.dirname(__file__))
  env = host_memory.malloc_env({k: v for k, v in os.environ.items()
                                if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}, large=True)
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                       text=True).stdout
  assert float(out) > 200, out
