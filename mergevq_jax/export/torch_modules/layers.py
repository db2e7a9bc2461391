"""PyTorch twins of `mergevq_jax.models.layers`: the building blocks of the tokenizer.

Parameters carry the NNX names and shapes unchanged (the native layout of
`mergevq_jax.export.native`): dense kernels (in, out), conv kernels HWIO (kh, kw, in, out),
depthwise kernels (k, k, 1, C), attention projections (D, n, heads, head_dim) with biases
(n, heads, head_dim), the output projection (heads, head_dim, D), norms `scale` / `bias`,
LayerScale `gamma`. They are permuted to PyTorch's layouts at forward time.

Feature maps are NCHW here (PyTorch's convention; the JAX model is NHWC); token sequences
are (B, N, D) in both. Everything computes in float32. Numerics as the JAX model:
LayerNorm eps 1e-5, GroupNorm eps 1e-6 (biased variance), exact (erf) GELU.

Pure PyTorch: nothing here imports JAX (see `mergevq_jax.export.torch_modules`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _trunc_normal(*shape: int, std: float = 0.02) -> nn.Parameter:
  return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std))


def _fan_in_uniform(*shape: int, fan_in: int) -> nn.Parameter:
  """PyTorch's default conv / linear init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _zeros(*shape: int) -> nn.Parameter:
  return nn.Parameter(torch.zeros(shape))


def _ones(*shape: int) -> nn.Parameter:
  return nn.Parameter(torch.ones(shape))


def gelu(x: torch.Tensor) -> torch.Tensor:
  """Exact (erf) GELU."""
  return F.gelu(x)


class Linear(nn.Module):
  """y = x @ kernel + bias; kernel (in, out) as nnx.Linear."""

  def __init__(self, cin: int, cout: int, *, use_bias: bool = True,
               init: str = "trunc_normal"):
    super().__init__()
    self.kernel = (_fan_in_uniform(cin, cout, fan_in=cin) if init == "torch_default"
                   else _trunc_normal(cin, cout))
    self.bias = _zeros(cout) if use_bias else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = x @ self.kernel
    return y if self.bias is None else y + self.bias


class Conv(nn.Module):
  """2-D conv on NCHW with an HWIO kernel (kh, kw, C_in, C_out) as nnx.Conv.

  padding 'SAME' with stride 1 is XLA's SAME (k // 2 each side for odd k); strided 'SAME'
  convs pad k // 2 on every side (PyTorch semantics, as `models.layers.conv`); 'VALID'
  pads nothing.
  """

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1,
               use_bias: bool = True, padding: str = "SAME"):
    super().__init__()
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    self.kernel = _fan_in_uniform(kernel, kernel, cin, cout, fan_in=cin * kernel * kernel)
    self.bias = _zeros(cout) if use_bias else None
    self.stride = stride
    if padding == "VALID":
      self.pads = (0, 0, 0, 0)
    elif stride > 1:
      self.pads = (kernel // 2,) * 4
    else:
      lo = (kernel - 1) // 2
      self.pads = (lo, kernel - 1 - lo, lo, kernel - 1 - lo)   # (left, right, top, bottom)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, C_in, H, W) -> (B, C_out, H', W')."""
    left, right, top, bottom = self.pads
    weight = self.kernel.permute(3, 2, 0, 1)   # HWIO -> OIHW
    if left == right and top == bottom:
      return F.conv2d(x, weight, self.bias, self.stride, (top, left))
    return F.conv2d(F.pad(x, self.pads), weight, self.bias, self.stride)


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (stride 1, zero padding k // 2, bias) on NCHW; kernel (k, k, 1, C)."""

  def __init__(self, channels: int, kernel: int = 3):
    super().__init__()
    self.kernel = _trunc_normal(kernel, kernel, 1, channels)
    self.bias = _zeros(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C, H, W)."""
    k = self.kernel.shape[0]
    return F.conv2d(x, self.kernel.permute(3, 2, 0, 1), self.bias, padding=k // 2,
                    groups=x.shape[1])


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm on channel-first input (B, C, ...); eps 1e-6 by default."""

  def __init__(self, channels: int, num_groups: int = 32, *, affine: bool = True,
               eps: float = 1e-6):
    super().__init__()
    if channels % num_groups:
      raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    self.num_groups, self.eps = num_groups, eps
    self.scale = _ones(channels) if affine else None
    self.bias = _zeros(channels) if affine else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, self.num_groups, self.scale, self.bias, self.eps)


def group_norm(channels: int, *, affine: bool = True) -> GroupNorm:
  """The 32-group GroupNorm of every CNN stage."""
  return GroupNorm(channels, 32, affine=affine)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, eps 1e-5; parameters `scale`, `bias` as nnx.LayerNorm."""

  def __init__(self, dim: int, eps: float = 1e-5):
    super().__init__()
    self.scale = _ones(dim)
    self.bias = _zeros(dim)
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), self.scale, self.bias, self.eps)


class ResBlock(nn.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (+ 1x1 shortcut), convs without bias."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.norm1 = group_norm(cin)
    self.conv1 = Conv(cin, cout, 3, use_bias=False)
    self.norm2 = group_norm(cout)
    self.conv2 = Conv(cout, cout, 3, use_bias=False)
    self.shortcut = Conv(cin, cout, 1, use_bias=False) if cin != cout else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, C_in, H, W) -> (B, C_out, H, W)."""
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return h + (self.shortcut(x) if self.shortcut is not None else x)


class Projection(nn.Module):
  """nnx.Einsum 'btd,dkhc->btkhc': (B, T, D) -> (B, T, n, heads, head_dim);
  kernel (D, n, heads, head_dim), bias (n, heads, head_dim)."""

  def __init__(self, dim: int, n: int, num_heads: int, head_dim: int):
    super().__init__()
    self.kernel = _trunc_normal(dim, n, num_heads, head_dim)
    self.bias = _zeros(n, num_heads, head_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("btd,dkhc->btkhc", x, self.kernel) + self.bias


class OutProjection(nn.Module):
  """nnx.Einsum 'bthc,hcd->btd'; kernel (heads, head_dim, D), bias (D,)."""

  def __init__(self, num_heads: int, head_dim: int, dim: int):
    super().__init__()
    self.kernel = _trunc_normal(num_heads, head_dim, dim)
    self.bias = _zeros(dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bthc,hcd->btd", x, self.kernel) + self.bias


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
  """softmax(q k^T / sqrt(head_dim) + bias) v, as jax.nn.dot_product_attention.

  q (B, T, H, C), k and v (B, S, H, C), bias broadcastable to (B, H, T, S) -> (B, T, H, C).
  """
  logits = torch.einsum("bthc,bshc->bhts", q, k) * (q.shape[-1] ** -0.5)
  if bias is not None:
    logits = logits + bias
  return torch.einsum("bhts,bshc->bthc", torch.softmax(logits, dim=-1), v)


class Attention(nn.Module):
  """Multi-head self- (`qkv`) or cross-attention (`q`, `kv`), output projection `out`."""

  def __init__(self, dim: int, num_heads: int, *, cross: bool = False):
    super().__init__()
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
    head_dim = dim // num_heads
    if cross:
      self.q = Projection(dim, 1, num_heads, head_dim)
      self.kv = Projection(dim, 2, num_heads, head_dim)
      self.qkv = None
    else:
      self.q = self.kv = None
      self.qkv = Projection(dim, 3, num_heads, head_dim)
    self.out = OutProjection(num_heads, head_dim, dim)

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
              key_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, D) queries; context (B, S, D) for cross-attention; key_bias (B, 1, 1, S)
    added to the logits. Returns (output (B, T, D), keys averaged over heads (B, S, C))."""
    if self.qkv is not None:
      q, k, v = self.qkv(x).unbind(2)
    else:
      q = self.q(x)[:, :, 0]
      k, v = self.kv(context).unbind(2)
    return self.out(dot_product_attention(q, k, v, key_bias)), k.mean(dim=2)


class Mlp(nn.Module):
  """fc1 -> GELU -> fc2; `mix=True` inserts a depthwise 3x3 conv on the token grid before
  the GELU (the decoder's MixFFN)."""

  def __init__(self, dim: int, hidden: int, *, mix: bool = False):
    super().__init__()
    self.fc1 = Linear(dim, hidden)
    self.dwconv = DepthwiseConv(hidden) if mix else None
    self.fc2 = Linear(hidden, dim)

  def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """x (B, N, D); grid (h, w) with h w = N, needed when mix=True."""
    h = self.fc1(x)
    if self.dwconv is not None:
      b, n, c = h.shape
      h = h.transpose(1, 2).reshape(b, c, *grid)
      h = self.dwconv(h).reshape(b, c, n).transpose(1, 2)
    return self.fc2(gelu(h))


class LayerScale(nn.Module):
  def __init__(self, dim: int, init_value: float):
    super().__init__()
    self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * self.gamma


class TransformerBlock(nn.Module):
  """Pre-LN block: x + ls1(attn(ln1 x)); [ToMe merge goes here]; x + ls2(mlp(ln2 x))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
               init_values: float = 1e-5, mix_mlp: bool = False):
    super().__init__()
    self.norm1 = LayerNorm(dim)
    self.attn = Attention(dim, num_heads)
    self.ls1 = LayerScale(dim, init_values)
    self.norm2 = LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), mix=mix_mlp)
    self.ls2 = LayerScale(dim, init_values)

  def attention_residual(self, x: torch.Tensor, key_bias: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x + attention branch, head-averaged keys (B, N, C): the ToMe metric)."""
    h, metric = self.attn(self.norm1(x), key_bias=key_bias)
    return x + self.ls1(h), metric

  def mlp_residual(self, x: torch.Tensor, grid: tuple[int, int] | None = None
                   ) -> torch.Tensor:
    return x + self.ls2(self.mlp(self.norm2(x), grid))

  def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """x (B, N, D) -> (B, N, D); grid (h, w) for a MixFFN block."""
    return self.mlp_residual(self.attention_residual(x)[0], grid)


class MLPHead(nn.Module):
  """Alignment head on the [CLS] feature.

  'layer3': D -> H -> GELU -> H -> GELU -> out; 'layer2_ln': D -> H -> GELU -> LayerNorm -> out.
  """

  def __init__(self, dim: int, hidden: int, out: int, kind: str):
    super().__init__()
    if kind not in ("layer3", "layer2_ln"):
      raise ValueError(f"align head kind must be 'layer3' or 'layer2_ln', got {kind!r}")
    self.fc1 = Linear(dim, hidden)
    self.fc2 = Linear(hidden, hidden) if kind == "layer3" else None
    self.norm = LayerNorm(hidden) if kind == "layer2_ln" else None
    self.fc_out = Linear(hidden, out)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x (B, D) -> (B, out)."""
    h = gelu(self.fc1(x))
    h = gelu(self.fc2(h)) if self.fc2 is not None else self.norm(h)
    return self.fc_out(h)
