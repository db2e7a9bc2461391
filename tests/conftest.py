import pathlib

import jax
import pytest
from flax import nnx

from mergevq_jax.config import load_config_file

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
