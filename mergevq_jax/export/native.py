"""The native layout: a model's NNX parameters as a flat {name: array} dict, unchanged.

Name = the parameter's path in the NNX module tree joined by '.' (`decoder.blocks.0.attn.
qkv.kernel`, `layers.wqkv`, `code_embed.1`); array = its value with JAX's shape and axis
order (dense kernels (in, out), conv kernels HWIO, fused qkv (D, 3, H, Dh), MergeAR layers
stacked on a leading axis). The PyTorch modules in `torch_modules` declare parameters with
exactly these names and shapes, so `load_state_dict(strict=True)` checks a file against
the model, and export -> import is the identity.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from mergevq_jax.export.export_dir import check_tensors


def flat_params(model_or_state) -> dict[str, np.ndarray]:
  """{dotted path: float32 numpy array} of every nnx.Param of a module (or nnx.State)."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(
      model_or_state, nnx.Param)
  return {".".join(map(str, path)): np.asarray(var.get_value(), np.float32)
          for path, var in nnx.to_flat_state(state)}


def expected_shapes(model_or_state) -> dict[str, tuple[int, ...]]:
  """{dotted path: shape} of every nnx.Param (works on an abstract `nnx.eval_shape` model)."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(
      model_or_state, nnx.Param)
  return {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}


def replace_params(state: nnx.State, tensors: dict, what: str = "the tensors") -> nnx.State:
  """`state` (nnx.State of Params, concrete or sharded) with every value replaced by the
  tensor of its native name, cast to its dtype and placed with its sharding. ValueError
  listing every missing, unexpected and mis-shaped tensor first."""
  check_tensors(tensors, expected_shapes(state), what)
  flat = []
  for path, var in nnx.to_flat_state(state):
    old = var.get_value()
    new = np.asarray(tensors[".".join(map(str, path))]).astype(old.dtype)
    sharding = getattr(old, "sharding", None)
    flat.append((path, var.replace(jax.device_put(new, sharding) if sharding is not None
                                   else jax.numpy.asarray(new))))
  return nnx.from_flat_state(flat)


def load_params(model: nnx.Module, tensors: dict, what: str = "the tensors") -> nnx.Module:
  """Write `tensors` (native names, any array type) into `model`'s nnx.Params in place."""
  nnx.update(model, replace_params(nnx.state(model, nnx.Param), tensors, what))
  return model
