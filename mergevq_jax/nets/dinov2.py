"""DINOv2 ViT (default ViT-B/14) as a frozen teacher: the pooled [CLS] feature.

images (B, S, S, 3) NHWC, already normalised with ImageNet mean/std ->
  conv 14x14 stride 14 -> (S/14)^2 patch tokens; prepend [CLS]; + position embedding
  -> depth x pre-LN blocks: x + ls1 * attn(ln1 x); x + ls2 * mlp(ln2 x)   (LN eps 1e-6,
     MLP GELU exact erf, LayerScale, no register tokens) -> final LayerNorm
  `features(images)` -> all tokens (B, 1 + N, D); `__call__(images)` -> token 0 (B, D).

Weights (`load_dinov2(path, image_size)`), layout detected from the keys:
  'hf'   (transformers `facebook/dinov2-base`, Dinov2Model; an outer prefix such as
          'dinov2.' is allowed and keys outside it are ignored):
           embeddings.cls_token (1,1,D), embeddings.position_embeddings (1,1+G*G,D),
           embeddings.patch_embeddings.projection.{weight (D,3,p,p), bias},
           encoder.layer.{i}.norm1.{weight,bias},
           encoder.layer.{i}.attention.attention.{query,key,value}.{weight (D,D), bias},
           encoder.layer.{i}.attention.output.dense.{weight,bias},
           encoder.layer.{i}.layer_scale1.lambda1, encoder.layer.{i}.norm2.{weight,bias},
           encoder.layer.{i}.mlp.fc1.{weight (M,D), bias}, encoder.layer.{i}.mlp.fc2.{weight,bias},
           encoder.layer.{i}.layer_scale2.lambda1, layernorm.{weight,bias};
           ignored: embeddings.mask_token
  'timm' (`vit_base_patch14_dinov2.lvd142m`; also Meta's original dinov2_vitb14 .pth):
           cls_token, pos_embed, patch_embed.proj.{weight,bias},
           blocks.{i}.norm1, blocks.{i}.attn.qkv.{weight (3D,D), bias} (fused q;k;v),
           blocks.{i}.attn.proj, blocks.{i}.ls1.gamma, blocks.{i}.norm2,
           blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, blocks.{i}.ls2.gamma, norm.{weight,bias};
           ignored: mask_token
Width D, patch p, depth, MLP width M and the stored grid G (37 for the public 518x518
release) are read from the file; heads = D / 64 (true for all DINOv2 sizes).

Position embedding: the G x G grid is resized ONCE at load time, in numpy, to the grid of
`image_size` (image_size // p), reproducing PyTorch bicubic exactly (align_corners=False):
  'hf'     transformers' Dinov2Embeddings.interpolate_pos_encoding (current versions):
           interpolate(size=(g, g), mode='bicubic', antialias=False), Keys a=-0.75.
  'timm'   timm resample_abs_pos_embed: interpolate(size=(g, g), mode='bicubic',
           antialias=True) -- PIL-style a=-0.5 kernel widened when downsampling.
  'dinov2' Meta's original code (and transformers before the size= change):
           interpolate(scale_factor=((g + 0.1) / G,) * 2, mode='bicubic', antialias=False).
The default `pos_resize='auto'` follows the file's layout ('hf' or 'timm'); the grid is
used unchanged when g == G. (jax.image.resize uses a=-0.5 and would differ.)
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.models import layers
from mergevq_jax.nets import weights
from mergevq_jax.sharding import axes

LN_EPS = 1e-6
HEAD_DIM = 64
POS_RESIZE_RULES = ("hf", "timm", "dinov2")


class Attention(nnx.Module):
  """Fused-qkv multi-head self-attention; kernels (D, 3, heads, head_dim), (heads, hd, D)."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               implementation: str | None = None):
    head_dim = dim // num_heads
    self.implementation = implementation
    self.qkv = nnx.Einsum(
        "btd,dkhc->btkhc", (dim, 3, num_heads, head_dim), (3, num_heads, head_dim),
        dtype=dtype, kernel_init=layers.TRUNC_NORMAL,
        kernel_metadata=axes("embed", None, "heads", "head_dim"),
        bias_metadata=axes(None, "heads", "head_dim"), rngs=rngs)
    self.proj = nnx.Einsum(
        "bthc,hcd->btd", (num_heads, head_dim, dim), (dim,), dtype=dtype,
        kernel_init=layers.TRUNC_NORMAL, kernel_metadata=axes("heads", "head_dim", "embed"),
        bias_metadata=axes("embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = jnp.moveaxis(self.qkv(x), 2, 0)
    o = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return self.proj(o)


class Block(nnx.Module):
  """x + ls1 * attn(norm1 x); x + ls2 * fc2(gelu(fc1(norm2 x)))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32, attention_impl: str | None = None):
    self.norm1 = layers.layer_norm(dim, eps=LN_EPS, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, implementation=attention_impl,
                          rngs=rngs)
    self.ls1 = layers.LayerScale(dim, 1.0)
    self.norm2 = layers.layer_norm(dim, eps=LN_EPS, dtype=dtype, rngs=rngs)
    self.fc1 = layers.linear(dim, mlp_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(mlp_dim, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.ls2 = layers.LayerScale(dim, 1.0)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.constrain_tokens(x + self.ls1(self.attn(self.norm1(x))))
    h = self.fc2(layers.gelu(self.fc1(self.norm2(x))))
    return layers.constrain_tokens(x + self.ls2(h))


class DinoV2(nnx.Module):
  """DINOv2 ViT for a fixed `image_size`; `__call__` -> (B, D) pooled [CLS] feature."""

  def __init__(self, *, rngs: nnx.Rngs, image_size: int = 224, patch_size: int = 14,
               dim: int = 768, depth: int = 12, num_heads: int | None = None,
               mlp_dim: int | None = None, dtype=jnp.float32,
               attention_impl: str | None = None):
    num_heads = num_heads or dim // HEAD_DIM
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
    if image_size < patch_size:
      raise ValueError(f"image_size {image_size} is smaller than the patch {patch_size}")
    self.image_size, self.patch_size, self.dtype = image_size, patch_size, dtype
    self.grid = image_size // patch_size
    self.patch_embed = layers.conv(3, dim, patch_size, stride=patch_size, padding="VALID",
                                   dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(layers.TRUNC_NORMAL(rngs.params(), (1, 1, dim)),
                               **axes(None, None, "embed"))
    self.pos_embed = nnx.Param(
        layers.TRUNC_NORMAL(rngs.params(), (1, 1 + self.grid ** 2, dim)),
        **axes(None, None, "embed"))
    self.blocks = nnx.List([
        Block(dim, num_heads, mlp_dim or 4 * dim, dtype=dtype, attention_impl=attention_impl,
              rngs=rngs) for _ in range(depth)])
    self.norm = layers.layer_norm(dim, eps=LN_EPS, dtype=dtype, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """(B, S, S, 3) ImageNet-normalised images -> (B, 1 + N, D) final-LayerNorm tokens."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"DINOv2 takes (B, H, W, 3) images, got shape {images.shape}")
    gh, gw = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
    if (gh, gw) != (self.grid, self.grid):
      raise ValueError(
          f"DINOv2 was built for {self.image_size}x{self.image_size} images (a "
          f"{self.grid}x{self.grid} patch grid) but got {images.shape[1]}x{images.shape[2]}; "
          f"load it with image_size={images.shape[1]} or resize the images")
    x = self.patch_embed(images.astype(self.dtype))
    b = x.shape[0]
    x = x.reshape(b, gh * gw, x.shape[-1])
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    x = layers.constrain_tokens(x)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.features(images)[:, 0]


# ----------------------------------------------------------------------------- loading

_MARKERS = {"hf": "embeddings.patch_embeddings.projection.weight",
            "timm": "patch_embed.proj.weight"}
_IGNORED = {"hf": ("embeddings.mask_token",), "timm": ("mask_token",)}
_BLOCK = {"hf": re.compile(r"^encoder\.layer\.(\d+)\."), "timm": re.compile(r"^blocks\.(\d+)\.")}
_REGISTERS = ("register_tokens", "reg_token")


def detect_layout(state: dict[str, np.ndarray], source: str) -> tuple[str, str]:
  """('hf' | 'timm', key prefix) from the patch-embedding key; ValueError otherwise."""
  for layout, marker in _MARKERS.items():
    hits = [k for k in state if k == marker or k.endswith("." + marker)]
    if hits:
      return layout, hits[0][:-len(marker)]
  some = ", ".join(f"'{k}'" for k in list(state)[:3])
  raise ValueError(f"{source}: not a DINOv2 ViT state dict: no '{_MARKERS['hf']}' "
                   f"(HF layout) or '{_MARKERS['timm']}' (timm layout) key; first keys: {some}")


def expected_shapes(layout: str, dim: int, patch: int, depth: int, mlp_dim: int,
                    num_pos: int) -> dict[str, tuple[int, ...]]:
  """Key -> PyTorch shape for `layout` (see the module docstring)."""
  d, m = dim, mlp_dim
  if layout == "hf":
    s = {"embeddings.cls_token": (1, 1, d), "embeddings.position_embeddings": (1, num_pos, d),
         "embeddings.patch_embeddings.projection.weight": (d, 3, patch, patch),
         "embeddings.patch_embeddings.projection.bias": (d,),
         "layernorm.weight": (d,), "layernorm.bias": (d,)}
    for i in range(depth):
      p = f"encoder.layer.{i}."
      for n in ("query", "key", "value"):
        s[p + f"attention.attention.{n}.weight"], s[p + f"attention.attention.{n}.bias"] = (
            (d, d), (d,))
      s.update({p + "attention.output.dense.weight": (d, d),
                p + "attention.output.dense.bias": (d,),
                p + "layer_scale1.lambda1": (d,), p + "layer_scale2.lambda1": (d,),
                p + "mlp.fc1.weight": (m, d), p + "mlp.fc1.bias": (m,),
                p + "mlp.fc2.weight": (d, m), p + "mlp.fc2.bias": (d,)})
      for n in ("norm1", "norm2"):
        s[p + n + ".weight"], s[p + n + ".bias"] = (d,), (d,)
    return s
  s = {"cls_token": (1, 1, d), "pos_embed": (1, num_pos, d),
       "patch_embed.proj.weight": (d, 3, patch, patch), "patch_embed.proj.bias": (d,),
       "norm.weight": (d,), "norm.bias": (d,)}
  for i in range(depth):
    p = f"blocks.{i}."
    s.update({p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
              p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
              p + "ls1.gamma": (d,), p + "ls2.gamma": (d,),
              p + "mlp.fc1.weight": (m, d), p + "mlp.fc1.bias": (m,),
              p + "mlp.fc2.weight": (d, m), p + "mlp.fc2.bias": (d,)})
    for n in ("norm1", "norm2"):
      s[p + n + ".weight"], s[p + n + ".bias"] = (d,), (d,)
  return s


def _architecture(state: dict[str, np.ndarray], layout: str, source: str) -> dict:
  marker = state[_MARKERS[layout]]
  if marker.ndim != 4 or marker.shape[1] != 3 or marker.shape[2] != marker.shape[3]:
    raise ValueError(f"{source}: '{_MARKERS[layout]}' has shape {marker.shape}, expected "
                     f"(D, 3, p, p)")
  dim, patch = int(marker.shape[0]), int(marker.shape[2])
  if dim % HEAD_DIM:
    raise ValueError(f"{source}: width {dim} is not a multiple of the DINOv2 head size 64")
  blocks = {int(m.group(1)) for k in state if (m := _BLOCK[layout].match(k))}
  if not blocks:
    raise ValueError(f"{source}: no transformer blocks found ({_BLOCK[layout].pattern})")
  depth = max(blocks) + 1
  fc1 = ("encoder.layer.0." if layout == "hf" else "blocks.0.") + "mlp.fc1.weight"
  mlp_dim = int(state[fc1].shape[0]) if fc1 in state else 4 * dim
  pos_key = "embeddings.position_embeddings" if layout == "hf" else "pos_embed"
  # Without a position embedding the missing-key error names the public shape (37x37 + 1).
  num_pos = (int(state[pos_key].shape[1]) if pos_key in state and state[pos_key].ndim == 3
             else 1 + 37 * 37)
  grid = int(round(np.sqrt(max(num_pos - 1, 0))))
  if pos_key in state and grid * grid + 1 != num_pos:
    raise ValueError(f"{source}: '{pos_key}' has {num_pos} positions, not 1 + a square grid "
                     f"(register-token or non-square checkpoints are not supported)")
  return dict(dim=dim, patch=patch, depth=depth, mlp_dim=mlp_dim, num_pos=num_pos, grid=grid)


def canonical_state(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """The file's DINOv2 tensors, prefix stripped, ignored keys dropped, keys and shapes
  checked (layout unchanged). Raises ValueError naming `source`."""
  layout, prefix = detect_layout(state, source)
  state = weights.strip_prefix(state, prefix) if prefix else dict(state)
  for k in state:
    if k.split(".")[-1] in _REGISTERS:
      raise ValueError(f"{source}: '{prefix}{k}': DINOv2 variants with register tokens are "
                       f"not supported")
  arch = _architecture(state, layout, source)
  expected = expected_shapes(layout, arch["dim"], arch["patch"], arch["depth"],
                             arch["mlp_dim"], arch["num_pos"])
  weights.check_keys(state, expected, source, ignored=_IGNORED[layout])
  return {k: state[k] for k in expected}


def resize_pos_embed(pos: np.ndarray, grid: int, rule: str) -> np.ndarray:
  """(1, 1 + G*G, D) position embedding -> (1, 1 + grid*grid, D) by `rule`
  ('hf' | 'timm' | 'dinov2', see the module docstring); [CLS] position kept."""
  if rule not in POS_RESIZE_RULES:
    raise ValueError(f"pos_resize must be one of {POS_RESIZE_RULES} or 'auto', got {rule!r}")
  old = int(round(np.sqrt(pos.shape[1] - 1)))
  if old == grid:
    return pos
  patch = pos[0, 1:].reshape(old, old, -1)
  if rule == "dinov2":
    sf = (grid + 0.1) / old
    out = weights.torch_bicubic_resize(patch, (grid, grid), scale_factor=(sf, sf))
  else:
    out = weights.torch_bicubic_resize(patch, (grid, grid), antialias=(rule == "timm"))
  out = out.astype(pos.dtype).reshape(1, grid * grid, -1)
  return np.concatenate([pos[:, :1], out], axis=1)


def _to_timm(state: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
  """HF names -> timm names (q, k, v fused in that order)."""
  out = {"cls_token": state["embeddings.cls_token"],
         "pos_embed": state["embeddings.position_embeddings"],
         "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
         "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
  for i in range(depth):
    h, t = f"encoder.layer.{i}.", f"blocks.{i}."
    qkv = [h + f"attention.attention.{n}." for n in ("query", "key", "value")]
    out[t + "attn.qkv.weight"] = np.concatenate([state[p + "weight"] for p in qkv], axis=0)
    out[t + "attn.qkv.bias"] = np.concatenate([state[p + "bias"] for p in qkv], axis=0)
    for src, dst in (("attention.output.dense", "attn.proj"), ("norm1", "norm1"),
                     ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
      out[t + dst + ".weight"] = state[h + src + ".weight"]
      out[t + dst + ".bias"] = state[h + src + ".bias"]
    out[t + "ls1.gamma"] = state[h + "layer_scale1.lambda1"]
    out[t + "ls2.gamma"] = state[h + "layer_scale2.lambda1"]
  return out


def load_dinov2(path: str | os.PathLike, image_size: int = 224, *, pos_resize: str = "auto",
                dtype=jnp.float32, attention_impl: str | None = None) -> DinoV2:
  """DinoV2 for `image_size` x `image_size` inputs from a user-supplied weight file (HF or
  timm layout, see the module docstring). Raises FileNotFoundError for a missing file and
  ValueError naming the file and the first missing / unexpected key or shape mismatch."""
  source = os.fspath(path)
  if pos_resize != "auto" and pos_resize not in POS_RESIZE_RULES:
    raise ValueError(f"pos_resize must be 'auto' or one of {POS_RESIZE_RULES}, "
                     f"got {pos_resize!r}")
  raw = weights.read_state_dict(source)
  layout, _ = detect_layout(raw, source)
  state = canonical_state(raw, source)
  arch = _architecture(state, layout, source)
  t = _to_timm(state, arch["depth"]) if layout == "hf" else state
  grid = image_size // arch["patch"]
  if grid < 1:
    raise ValueError(f"image_size {image_size} is smaller than the patch {arch['patch']}")
  rule = layout if pos_resize == "auto" else pos_resize
  d, heads = arch["dim"], arch["dim"] // HEAD_DIM
  params = {"cls_token": t["cls_token"],
            "pos_embed": resize_pos_embed(t["pos_embed"], grid, rule),
            "patch_embed.kernel": weights.conv_kernel(t["patch_embed.proj.weight"]),
            "patch_embed.bias": t["patch_embed.proj.bias"],
            "norm.scale": t["norm.weight"], "norm.bias": t["norm.bias"]}
  for i in range(arch["depth"]):
    b, o = f"blocks.{i}.", f"blocks.{i}."
    qkv_w = t[b + "attn.qkv.weight"].reshape(3, heads, d // heads, d)
    params[o + "attn.qkv.kernel"] = np.transpose(qkv_w, (3, 0, 1, 2))
    params[o + "attn.qkv.bias"] = t[b + "attn.qkv.bias"].reshape(3, heads, d // heads)
    params[o + "attn.proj.kernel"] = weights.linear_kernel(
        t[b + "attn.proj.weight"]).reshape(heads, d // heads, d)
    params[o + "attn.proj.bias"] = t[b + "attn.proj.bias"]
    for n in ("norm1", "norm2"):
      params[o + n + ".scale"] = t[b + n + ".weight"]
      params[o + n + ".bias"] = t[b + n + ".bias"]
    for n in ("fc1", "fc2"):
      params[o + n + ".kernel"] = weights.linear_kernel(t[b + f"mlp.{n}.weight"])
      params[o + n + ".bias"] = t[b + f"mlp.{n}.bias"]
    params[o + "ls1.gamma"] = t[b + "ls1.gamma"]
    params[o + "ls2.gamma"] = t[b + "ls2.gamma"]
  model = nnx.eval_shape(lambda: DinoV2(
      rngs=nnx.Rngs(0), image_size=image_size, patch_size=arch["patch"], dim=d,
      depth=arch["depth"], mlp_dim=arch["mlp_dim"], dtype=dtype,
      attention_impl=attention_impl))
  return weights.assign_params(model, params)
