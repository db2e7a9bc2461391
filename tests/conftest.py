import atexit
import math
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
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from mergevq_jax.config import load_config_file  # noqa: E402
from mergevq_jax.export import native  # noqa: E402

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


def _fan_in(name: str, shape) -> int:
  if name.endswith("attn.out.kernel"):                  # (heads, head_dim, D)
    return shape[0] * shape[1]
  if len(shape) == 2 or name.split(".")[-2] in ("qkv", "q", "kv"):   # (in, out), (D, n, H, C)
    return shape[0]
  return shape[0] * shape[1] * shape[2]                 # conv HWIO, depthwise (k, k, 1, C)


def random_tokenizer_params(abstract, seed: int = 0) -> dict[str, np.ndarray]:
  """Every parameter random: kernels N(0, 1/fan_in) (unit-gain layers, so that attention
  and the merge choices are not near-uniform), biases N(0, 0.1), norm scales 1 + N(0, 0.1),
  LayerScale gammas N(0, 0.3) (initialised to 1e-5: the blocks would be identities), [CLS]
  and recovery queries N(0, 0.5) (initialised to ~1e-6). {native name: float32 array}."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in sorted(native.expected_shapes(abstract).items()):
    last = name.rsplit(".", 1)[-1]
    if last == "kernel":
      value = rng.normal(0.0, 1.0 / math.sqrt(_fan_in(name, shape)), shape)
    elif last == "bias":
      value = rng.normal(0.0, 0.1, shape)
    elif last == "scale":
      value = 1.0 + rng.normal(0.0, 0.1, shape)
    elif last == "gamma":
      value = rng.normal(0.0, 0.3, shape)
    else:                       # encoder.cls_token, recovery.queries
      value = rng.normal(0.0, 0.5, shape)
    out[name] = value.astype(np.float32)
  return out
