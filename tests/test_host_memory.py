"""The huge-page malloc tunable is added once, respects opt-out, and survives re-exec."""
import os
import platform
import subprocess
import sys

import pytest

from mergevq_jax import host_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.platform != "linux",
                           reason="glibc tunable")


@glibc
def test_hugepage_env_adds_the_tunable_once_and_keeps_others():
  env = host_memory.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
  assert host_memory.hugepage_env(env) == env
  assert "GLIBC_TUNABLES" not in host_memory.hugepage_env({"MERGEVQ_HUGEPAGES": "0"})


@glibc
def test_reexec_restarts_with_the_tunable_and_the_same_arguments():
  code = ("import os, sys; from mergevq_jax import host_memory; "
          "host_memory.reexec_with_hugepages(); "
          "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MERGEVQ_HUGEPAGES")}
  out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out[0] == host_memory.TUNABLE
  assert " ".join(out[1:]) == "['a', '--b=1']"
