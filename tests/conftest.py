import atexit
import os
import pathlib
import shutil
import tempfile

# One persistent XLA compilation cache per test session, shared with the subprocesses the
# tests start: runs that rebuild the same step (resume tests, CLIs, 8-device workers)
# load the executable instead of compiling it again. Nothing outlives the session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="mergevq_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE

# Tests run on the CPU; with libtpu installed (the test extra, for tests/test_aot.py) JAX
# would otherwise look for TPU chips first, in every process the tests start.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from mergevq_jax.config import load_config_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, platform=None):
  """get_config() of configs/<name>.py."""
  return load_config_file(str(ROOT / "configs" / f"{name}.py"), platform)


@pytest.fixture(scope="session")
def tiny_config():
  return load_config("tokenizer_tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  from mergevq_jax.models.tokenizer import Tokenizer
  return Tokenizer(tiny_config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def tiny_images():
  return jax.random.uniform(jax.random.key(7), (2, 64, 64, 3), minval=-1.0, maxval=1.0)
