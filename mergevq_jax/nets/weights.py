"""Weight import for the frozen networks: read state dicts, re-lay tensors, check keys.

Readers (all return a flat `{key: np.ndarray}`; floating tensors become float32):
  .pth / .pt / .bin  PyTorch pickles (`torch.save`), read with `torch.load(weights_only=True)`;
                     torch is imported only here (`pip install torch==2.13.0`).
  .safetensors       `safetensors.numpy`, no torch needed.
  .npz               `numpy.load`, nothing extra needed (what `nets.convert` writes).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

TORCH_EXTS = (".pth", ".pt", ".bin", ".ckpt")
TORCH_HINT = ("pip install torch==2.13.0 (the exact pin pulls the CPU build), or convert the "
              "file to .safetensors / .npz on a machine that has PyTorch")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Flat `{key: array}` from a .pth/.pt/.bin, .safetensors or .npz file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext in TORCH_EXTS:
    state = _read_torch(path)
  elif ext == ".safetensors":
    state = _read_safetensors(path)
  elif ext == ".npz":
    state = _read_npz(path)
  else:
    raise ValueError(f"{path}: unknown weight-file type {ext!r}; expected one of "
                     f"{', '.join(TORCH_EXTS)}, .safetensors or .npz")
  if not state:
    raise ValueError(f"{path}: the file holds no tensors")
  return {k: _as_float32(v) for k, v in state.items()}


def _as_float32(a: np.ndarray) -> np.ndarray:
  a = np.asarray(a)
  return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading the PyTorch checkpoint {path} needs PyTorch: {TORCH_HINT}") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and torch errors all mean "not a usable checkpoint"
    raise ValueError(f"{path}: not a readable PyTorch checkpoint "
                     f"({type(e).__name__}: {e})") from e
  # Training checkpoints wrap the weights: {'state_dict': {...}, 'epoch': ...}.
  for wrapper in ("state_dict", "model", "module"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), "
                     f"got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if torch.is_tensor(v):
      v = v.detach().cpu()
      out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file
  except ImportError as e:
    raise ImportError(f"reading {path} needs the safetensors package: "
                      f"pip install safetensors") from e
  try:
    return load_file(path)
  except Exception as e:
    raise ValueError(f"{path}: not a readable safetensors file "
                     f"({type(e).__name__}: {e})") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  import zipfile
  if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, and suggest one
    raise ValueError(f"{path}: not an .npz file (an .npz is a zip of .npy arrays, as "
                     f"written by numpy.savez or `python -m mergevq_jax.nets.convert`)")
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception as e:
    raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e


def save_npz(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
  """Write `state` uncompressed (keys kept verbatim)."""
  with open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in state.items()})


# ----------------------------------------------------------------------------- re-layout

def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
  return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> Flax kernel (in, out)."""
  return np.transpose(w, (1, 0))


# ----------------------------------------------------------------------------- key checks

def strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Keys that start with `prefix`, with the prefix removed (others are dropped)."""
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_keys(state: Mapping[str, np.ndarray], expected: Mapping[str, Sequence[int]],
               source: str, ignored: Iterable[str] = ()) -> None:
  """Raise ValueError naming `source` and the first missing / unexpected key and the first
  shape mismatch. `ignored` keys may be present or absent."""
  ignored = set(ignored)
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected and k not in ignored]
  mismatched = [k for k in expected
                if k in state and tuple(state[k].shape) != tuple(expected[k])]
  problems = []
  if missing:
    k = missing[0]
    problems.append(f"{len(missing)} missing key(s), first '{k}' "
                    f"(expected shape {tuple(expected[k])})")
  if unexpected:
    k = unexpected[0]
    problems.append(f"{len(unexpected)} unexpected key(s), first '{k}' "
                    f"(shape {tuple(state[k].shape)})")
  if mismatched:
    k = mismatched[0]
    problems.append(f"{len(mismatched)} shape mismatch(es), first '{k}' has shape "
                    f"{tuple(state[k].shape)}, expected {tuple(expected[k])}")
  if problems:
    raise ValueError(f"{source}: weights do not fit the model: " + "; ".join(problems))


def assign_params(module: nnx.Module, params: Mapping[str, np.ndarray]) -> nnx.Module:
  """Set every nnx.Variable of `module` (abstract from nnx.eval_shape, or concrete) from
  `params`, keyed by the dotted attribute path ('blocks.0.attn.qkv.kernel').

  Variable metadata (logical axes) is kept. Every variable must be supplied exactly.
  """
  seen = set()
  for path, node in nnx.iter_graph(module):
    if not isinstance(node, nnx.Variable):
      continue
    name = ".".join(str(p) for p in path)
    if name not in params:
      raise KeyError(f"internal: no converted value for parameter '{name}'")
    value = np.asarray(params[name])
    if tuple(value.shape) != tuple(node.shape):
      raise ValueError(f"internal: parameter '{name}' has shape {tuple(node.shape)}, "
                       f"converted value {tuple(value.shape)}")
    node.set_value(jnp.asarray(value, dtype=node.dtype))
    seen.add(name)
  extra = sorted(set(params) - seen)
  if extra:
    raise KeyError(f"internal: converted values without a parameter: {extra[:3]}")
  return module


# ----------------------------------------------------------------------------- bicubic

def _cubic(x: float, a: float) -> float:
  """Keys cubic convolution kernel W(|x|) with parameter a (support |x| < 2)."""
  x = abs(x)
  if x <= 1:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2:
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return 0.0


def torch_bicubic_matrix(in_size: int, out_size: int, *, scale_factor: float | None = None,
                         antialias: bool = False) -> np.ndarray:
  """(out_size, in_size) matrix W with `out = W @ in` along one axis, equal to
  `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)` on that axis.

  antialias=False: Keys kernel a=-0.75 at source coordinate (i + 0.5) * scale - 0.5, the
  4 taps clamped to the border. antialias=True: PIL-style kernel a=-0.5 stretched by the
  scale when downsampling, taps outside the input dropped, weights renormalised.
  scale = in/out, or 1/scale_factor when a scale factor is given (PyTorch then uses it
  for the coordinates, not the rounded sizes). Scale and coordinates are rounded to
  float32 where PyTorch's CPU kernel holds them in float32 (the coordinate as one fused
  multiply-add); weights are float64. Agrees with PyTorch to ~5e-7 per weight.
  """
  f32 = lambda v: float(np.float32(v))
  scale = f32(np.float32(in_size) / np.float32(out_size)) if scale_factor is None else f32(
      1.0 / scale_factor)
  w = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    for o in range(out_size):
      real = f32(scale * (o + 0.5) - 0.5)
      i0 = min(math.floor(real), in_size - 1)
      t = min(max(real - i0, 0.0), 1.0)
      for k in range(-1, 3):
        w[o, min(max(i0 + k, 0), in_size - 1)] += _cubic(t - k, -0.75)
    return w
  support = f32(2.0 * scale) if scale >= 1 else 2.0
  inv = f32(1.0 / scale) if scale >= 1 else 1.0
  for o in range(out_size):
    center = f32(scale * (o + 0.5))
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.array([_cubic((j - center + 0.5) * inv, -0.5) for j in range(lo, hi)])
    total = taps.sum()
    w[o, lo:hi] = taps / total if total != 0 else taps
  return w


def torch_bicubic_resize(x: np.ndarray, size: tuple[int, int], *,
                         scale_factor: tuple[float, float] | None = None,
                         antialias: bool = False) -> np.ndarray:
  """Resize a channels-last (H, W, C) array like PyTorch bicubic (align_corners=False).

  Separable: equal to the 2-D PyTorch kernel up to float rounding (computed in float64).
  """
  h, w = x.shape[:2]
  sh, sw = (None, None) if scale_factor is None else scale_factor
  mh = torch_bicubic_matrix(h, size[0], scale_factor=sh, antialias=antialias)
  mw = torch_bicubic_matrix(w, size[1], scale_factor=sw, antialias=antialias)
  return np.einsum("oh,hwc,pw->opc", mh, np.asarray(x, np.float64), mw)
