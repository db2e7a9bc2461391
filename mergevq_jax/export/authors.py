"""The authors' layout: a tokenizer's parameters under the key names and PyTorch shapes of
the authors' `MergeVQModel.state_dict()` (github ApexGen-X/MergeVQ, `taming/models/
lfqgan_rep.py`, built from `taming/modules/diffusionmodules/model_mergevq.py` and
`taming/modules/vqvae/lookup_free_quantize.py`; checked against commit AUTHORS_COMMIT).

  to_authors(params, config)    native {NNX path: JAX-shaped array} -> {their key: array}
  from_authors(tensors, config) the inverse; to_authors -> from_authors is bit-exact
  yaml_snippet(config)          the `model:` section of their configs/gpu_s1 YAML that
                                builds the matching MergeVQModel (LightningCLI, and
                                reconstruct.py's instantiate_from_config)
  supported(config) / problems(config) / check_supported(config)

Shapes: conv kernels HWIO -> OIHW; dense kernels (in, out) -> Linear (out, in); fused qkv
(D, 3, H, Dh) -> Linear (3 D, D) with output index s*D + h*Dh + c (timm's
reshape(B, N, 3, H, Dh)); attention output (H, Dh, D) -> Linear (D, D); bias (3, H, Dh) ->
(3 D,); the encoder's 1x1 output projection (a dense kernel here) -> Conv2d (18, D, 1, 1).
Every change is a transpose or a reshape, so the round trip is exact.

Names: encoder.stem.{conv_in, blocks.i.j, downsample.i} -> encoder.{conv_in, down.i.block.j,
down.i.downsample}; R stem encoder.stem.{proj, norm} -> encoder.conv_in.{0, 1};
encoder.{cls_token, blocks.n} -> encoder.attn.{cls_token, blocks.n} (attn.out -> attn.proj,
ResBlock shortcut -> nin_shortcut, norm scale -> weight); align_head.{fc1, fc2, fc_out} ->
encoder.dist_head.{0, 2, 4} ('layer3') and align_head.{fc1, norm, fc_out} ->
encoder.dist_head.{0, 2, 3} ('layer2_ln'); decoder.pos_conv -> decoder.attn.pos_embed;
decoder.blocks.n -> decoder.attn.blocks.n. Our decoder lists its levels coarsest first,
theirs by level index: decoder.{adaptive, levels, upsample}.j -> decoder.{adaptive.l,
up.l.block, up.l.upsample.conv1} with l = len(ch_mult) - 1 - j.

What is on one side only:
  * `recovery.*` (our learned source recovery) is dropped. The authors' SourceRecovery
    with learn_source=True is another network (cross-attention blocks only, no
    self-attention layers, a softmax over K), all their configs set learn_source: False,
    and their MergeVQModel.decode cannot run it (it receives a tuple). With
    keep_native_only=True, to_authors keeps these tensors unchanged under
    `mergevq_jax.<native name>` (their loaders, strict=False, ignore them) and from_authors
    restores them; without it, from_authors returns every native name but `recovery.*`.
  * `quantize.*` has no entries: their LFQ holds only non-persistent buffers (mask, zero,
    codebook), as ours holds no parameters.
  * Their checkpoints also hold `loss.*` (PatchGAN discriminator, LPIPS), `dist_model.*`
    (the DINOv2 teacher), `model_ema.*` (EMA shadows; from_authors(..., ema=True) reads the
    weights from there) and `recovery.*` of a learn_source model: from_authors ignores them,
    to_authors writes none (our discriminator is not part of the tokenizer's parameters; the
    teacher and LPIPS are frozen third-party weights). The YAML sets use_ema: False, so their
    EMA scope does not swap the loaded weights for freshly initialised shadows.

Configs without an authors' counterpart raise ValueError listing every reason (`problems`):
MergeAR, a K that is not a square (their encoder reshapes the K tokens to a sqrt K grid),
merge schedules that differ from their `check_parse_r` / `parse_r`, head counts their single
num_heads / head_dim cannot express, an alignment head whose hidden width is not 4 x width,
proportional attention off, an R patch size other than 2^(len(ch_mult) - 1).

This module needs only numpy (no torch, no jax) and reads the config as an ml_collections
ConfigDict or a plain nested dict.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from mergevq_jax.models.merge_schedule import merge_schedule

AUTHORS_REPO = "ApexGen-X/MergeVQ"
AUTHORS_COMMIT = "52671985f5b9f9338469538950ed747a694f88ea"
MODEL_CLASS = "taming.models.lfqgan_rep.MergeVQModel"
YAML_FILE = "authors_config.yaml"

NATIVE_ONLY = ("recovery.",)       # native parameters with no authors' counterpart
EXTRA_PREFIX = "mergevq_jax."      # where keep_native_only=True stores them
# Entries of an authors' checkpoint that are not tokenizer weights (see the module doc).
AUTHORS_IGNORED = ("loss.", "dist_model.", "model_ema.", "recovery.", "colorize")
NO_MERGEAR = "the authors' code has no MergeAR; use --layout=native"

_MISSING = object()


# ----------------------------------------------------------------------------- config


def _get(config, dotted: str, default: Any = _MISSING):
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      if default is not _MISSING:
        return default
      raise ValueError(f"the config has no {dotted}") from None
  return node


class _Geometry(NamedTuple):
  vit: bool
  ch: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  num_res_extra: int
  z: int
  patch: int
  enc_width: int
  dec_width: int
  enc_heads: int
  dec_heads: int
  layers: int
  image_size: int
  num_tokens: int
  num_keep: int
  align_head: str
  align_hidden: int
  align_dim: int


def _geometry(config) -> _Geometry:
  m = lambda key: _get(config, "model." + key)
  vit = m("encoder_type") == "vit"
  ch, ch_mult = int(m("ch")), tuple(int(k) for k in m("ch_mult"))
  down = int(m("patch_size")) if vit else 2 ** (len(ch_mult) - 1)
  image = int(m("image_size"))
  enc_width = int(m("width")) if vit else ch * ch_mult[-1]
  return _Geometry(
      vit=vit, ch=ch, ch_mult=ch_mult, num_res_blocks=int(m("num_res_blocks")),
      num_res_extra=int(m("num_res_extra")), z=int(m("z_channels")), patch=down,
      enc_width=enc_width, dec_width=ch * ch_mult[-1], enc_heads=int(m("num_heads")),
      dec_heads=int(m("decoder_num_heads")), layers=int(m("num_layers")), image_size=image,
      num_tokens=(image // down) ** 2, num_keep=int(m("num_keep")),
      align_head=str(m("align_head") or ""), align_hidden=int(m("align_hidden")),
      align_dim=int(m("align_dim")))


def _is_mergear(config) -> bool:
  stage = _get(config, "stage", None)
  return stage == "mergear" or (stage is None and _get(config, "model.encoder_type", None) is None)


# ----------------------------------------------------------------------------- their rules


def authors_parse_r(num_layers: int, r, total: int | None = None) -> list[int]:
  """Their tome.parse_r for r = (r, inflection): a linear schedule around r, the remainder
  to the first (inflection < 0) or last block."""
  r, inflect = r
  lo = int(r * (1.0 - inflect))
  hi = 2 * r - lo
  step = (hi - lo) / (num_layers - 1)
  out = [int(lo + step * i) for i in range(num_layers)]
  if total is not None and total != sum(out):
    out[0 if inflect < 0 else -1] += total - sum(out)
  return out


def authors_check_parse_r(num_layers: int, merge_num: int, inflect: float = -0.5) -> int:
  """Their tome.check_parse_r (sqrt=False): the first r whose parse_r total is closest to
  merge_num, scanning r upwards until the gap grows."""
  gap, best = math.inf, 0
  for r in range(merge_num):
    g = abs(sum(authors_parse_r(num_layers, (r, inflect))) - merge_num)
    if g < gap:
      gap, best = g, r
    elif g > gap:
      break
  return best


def authors_schedule(num_layers: int, num_tokens: int, num_keep: int) -> list[int]:
  """Tokens their encoder merges per block at eval for merge_num = L - K: parse_r of
  check_parse_r, then bipartite_soft_matching's cap (at most half of the mergeable tokens,
  nothing for r <= 0)."""
  merge = num_tokens - num_keep
  listed = authors_parse_r(num_layers, (authors_check_parse_r(num_layers, merge), -0.5), merge)
  left, out = num_tokens, []
  for r in listed:
    r = max(0, min(r, left // 2))
    out.append(r)
    left -= r
  return out


def _ours_schedule(num_layers: int, num_tokens: int, num_keep: int) -> list[int] | str:
  """Our merge schedule (`mergevq_jax.models.merge_schedule`, pure Python) as a list, or
  why there is none."""
  try:
    return list(merge_schedule(num_layers, num_tokens, num_keep))
  except ValueError as e:
    return f"model.num_keep: {e}"


def _heads(g: _Geometry) -> dict | None:
  """ddconfig num_heads (and head_dim) that give the encoder and the decoder our head counts:
  their encoder and decoder share num_heads, or use max(width // head_dim, num_heads)."""
  if g.enc_heads == g.dec_heads:
    return {"num_heads": g.enc_heads}
  low = min(g.enc_heads, g.dec_heads)
  for head_dim in (g.enc_width // g.enc_heads, g.dec_width // g.dec_heads):
    if (max(g.enc_width // head_dim, low) == g.enc_heads
        and max(g.dec_width // head_dim, low) == g.dec_heads):
      return {"num_heads": low, "head_dim": head_dim}
  return None


def problems(config) -> list[str]:
  """Every reason why `config` has no counterpart in the authors' code (empty: supported)."""
  if _is_mergear(config):
    return [NO_MERGEAR]
  try:
    g = _geometry(config)
  except ValueError as e:
    return [f"{e}: not a tokenizer config"]
  out = []
  if g.vit and g.patch != 2 ** (len(g.ch_mult) - 1):
    out.append(f"model.patch_size={g.patch}: their R encoder (isotropic) patchifies by "
               f"2^(len(ch_mult) - 1) = {2 ** (len(g.ch_mult) - 1)}")
  if g.vit and g.enc_width <= 1:
    out.append(f"model.width={g.enc_width}: their isotropic width must be an int > 1")
  if math.isqrt(g.num_keep) ** 2 != g.num_keep:
    out.append(f"model.num_keep={g.num_keep} is not a square: their encoder reshapes the K "
               f"kept tokens to a sqrt(K) x sqrt(K) grid")
  if g.layers < 2:
    out.append(f"model.num_layers={g.layers}: their parse_r divides by num_layers - 1")
  else:
    ours = _ours_schedule(g.layers, g.num_tokens, g.num_keep)
    theirs = authors_schedule(g.layers, g.num_tokens, g.num_keep)
    if isinstance(ours, str):
      out.append(ours)
    elif ours != theirs:
      out.append(f"merge schedule for L={g.num_tokens}, K={g.num_keep}: ours {ours}, their "
                 f"check_parse_r/parse_r gives {theirs}")
  if _heads(g) is None:
    out.append(f"heads: encoder {g.enc_heads} of width {g.enc_width}, decoder {g.dec_heads} of "
               f"width {g.dec_width}; their num_heads / head_dim cannot give both")
  if g.align_head not in ("", "layer3", "layer2_ln"):
    out.append(f"model.align_head={g.align_head!r} is unknown")
  elif g.align_head and g.align_hidden != 4 * g.enc_width:
    out.append(f"model.align_hidden={g.align_hidden}: their dist_head's hidden width is "
               f"4 x {g.enc_width} = {4 * g.enc_width}")
  if not _get(config, "model.proportional_attention", True):
    out.append("model.proportional_attention=False: their ToMe always uses proportional "
               "attention (apply_patch prop_attn=True)")
  return out


def supported(config) -> bool:
  return not problems(config)


def check_supported(config) -> None:
  """ValueError listing every reason why `config` has no authors' counterpart."""
  found = problems(config)
  if found == [NO_MERGEAR]:
    raise ValueError(NO_MERGEAR)
  if found:
    raise ValueError("this config has no counterpart in the authors' MergeVQModel "
                     f"({AUTHORS_REPO}); use --layout=native:\n  " + "\n  ".join(found))


# ----------------------------------------------------------------------------- key map


class Entry(NamedTuple):
  native: str
  kind: str                  # how the native array becomes theirs (see _FORWARD)
  native_shape: tuple[int, ...]
  authors_shape: tuple[int, ...]


def _prod(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


_AUTHORS_SHAPE = {
    "same": lambda s: s,
    "linear": lambda s: (s[1], s[0]),
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "conv1x1": lambda s: (s[1], s[0], 1, 1),
    "qkv": lambda s: (_prod(s[1:]), s[0]),
    "proj": lambda s: (s[-1], _prod(s[:-1])),
    "flat": lambda s: (_prod(s),),
}
_FORWARD = {
    "same": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "conv1x1": lambda a: a.T[:, :, None, None],
    "qkv": lambda a: a.reshape(a.shape[0], -1).T,
    "proj": lambda a: a.reshape(-1, a.shape[-1]).T,
    "flat": lambda a: a.reshape(-1),
}
_INVERSE = {
    "same": lambda b, s: b,
    "linear": lambda b, s: b.T,
    "conv": lambda b, s: b.transpose(2, 3, 1, 0),
    "conv1x1": lambda b, s: b[:, :, 0, 0].T,
    "qkv": lambda b, s: b.T.reshape(s),
    "proj": lambda b, s: b.T.reshape(s),
    "flat": lambda b, s: b.reshape(s),
}


class _Spec:
  def __init__(self):
    self.entries: dict[str, Entry] = {}

  def add(self, theirs: str, ours: str, kind: str, shape) -> None:
    shape = tuple(int(x) for x in shape)
    self.entries[theirs] = Entry(ours, kind, shape, tuple(_AUTHORS_SHAPE[kind](shape)))

  def linear(self, theirs, ours, cin, cout):
    self.add(f"{theirs}.weight", f"{ours}.kernel", "linear", (cin, cout))
    self.add(f"{theirs}.bias", f"{ours}.bias", "same", (cout,))

  def conv(self, theirs, ours, k, cin, cout, bias=True):
    self.add(f"{theirs}.weight", f"{ours}.kernel", "conv", (k, k, cin, cout))
    if bias:
      self.add(f"{theirs}.bias", f"{ours}.bias", "same", (cout,))

  def depthwise(self, theirs, ours, channels):
    self.add(f"{theirs}.weight", f"{ours}.kernel", "conv", (3, 3, 1, channels))
    self.add(f"{theirs}.bias", f"{ours}.bias", "same", (channels,))

  def norm(self, theirs, ours, channels):
    self.add(f"{theirs}.weight", f"{ours}.scale", "same", (channels,))
    self.add(f"{theirs}.bias", f"{ours}.bias", "same", (channels,))

  def resblock(self, theirs, ours, cin, cout):
    self.norm(f"{theirs}.norm1", f"{ours}.norm1", cin)
    self.conv(f"{theirs}.conv1", f"{ours}.conv1", 3, cin, cout, bias=False)
    self.norm(f"{theirs}.norm2", f"{ours}.norm2", cout)
    self.conv(f"{theirs}.conv2", f"{ours}.conv2", 3, cout, cout, bias=False)
    if cin != cout:
      self.conv(f"{theirs}.nin_shortcut", f"{ours}.shortcut", 1, cin, cout, bias=False)

  def block(self, theirs, ours, dim, heads, mix):
    """timm-style Block (their tome.timm.Block, MixMlp in the decoder)."""
    self.norm(f"{theirs}.norm1", f"{ours}.norm1", dim)
    self.add(f"{theirs}.attn.qkv.weight", f"{ours}.attn.qkv.kernel", "qkv",
             (dim, 3, heads, dim // heads))
    self.add(f"{theirs}.attn.qkv.bias", f"{ours}.attn.qkv.bias", "flat", (3, heads, dim // heads))
    self.add(f"{theirs}.attn.proj.weight", f"{ours}.attn.out.kernel", "proj",
             (heads, dim // heads, dim))
    self.add(f"{theirs}.attn.proj.bias", f"{ours}.attn.out.bias", "same", (dim,))
    self.add(f"{theirs}.ls1.gamma", f"{ours}.ls1.gamma", "same", (dim,))
    self.norm(f"{theirs}.norm2", f"{ours}.norm2", dim)
    self.linear(f"{theirs}.mlp.fc1", f"{ours}.mlp.fc1", dim, 4 * dim)
    if mix:
      self.depthwise(f"{theirs}.mlp.dwconv", f"{ours}.mlp.dwconv", 4 * dim)
    self.linear(f"{theirs}.mlp.fc2", f"{ours}.mlp.fc2", 4 * dim, dim)
    self.add(f"{theirs}.ls2.gamma", f"{ours}.ls2.gamma", "same", (dim,))


def key_map(config) -> dict[str, Entry]:
  """{their key: Entry(native name, transform, native shape, their shape)}: exactly the keys
  and shapes of their MergeVQModel(**yaml_snippet init_args).state_dict() (not in its
  order); ValueError for an unsupported config."""
  check_supported(config)
  g = _geometry(config)
  s = _Spec()
  # encoder: stem
  if g.vit:
    s.conv("encoder.conv_in.0", "encoder.stem.proj", g.patch, 3, g.enc_width)
    s.norm("encoder.conv_in.1", "encoder.stem.norm", g.enc_width)
  else:
    s.conv("encoder.conv_in", "encoder.stem.conv_in", 3, 3, g.ch, bias=False)
    cin = g.ch
    for i, mult in enumerate(g.ch_mult):
      cout = g.ch * mult
      for j in range(g.num_res_blocks):
        s.resblock(f"encoder.down.{i}.block.{j}", f"encoder.stem.blocks.{i}.{j}", cin, cout)
        cin = cout
      if i < len(g.ch_mult) - 1:
        s.conv(f"encoder.down.{i}.downsample", f"encoder.stem.downsample.{i}", 3, cout, cout)
  # encoder: ToMe transformer and outputs
  w = g.enc_width
  s.add("encoder.attn.cls_token", "encoder.cls_token", "same", (1, 1, w))
  for n in range(g.layers):
    s.block(f"encoder.attn.blocks.{n}", f"encoder.blocks.{n}", w, g.enc_heads, mix=False)
  s.norm("encoder.norm_out", "encoder.norm_out", w)
  s.add("encoder.conv_out.weight", "encoder.conv_out.kernel", "conv1x1", (w, g.z))
  s.add("encoder.conv_out.bias", "encoder.conv_out.bias", "same", (g.z,))
  if g.align_head == "layer3":
    s.linear("encoder.dist_head.0", "align_head.fc1", w, g.align_hidden)
    s.linear("encoder.dist_head.2", "align_head.fc2", g.align_hidden, g.align_hidden)
    s.linear("encoder.dist_head.4", "align_head.fc_out", g.align_hidden, g.align_dim)
  elif g.align_head == "layer2_ln":
    s.linear("encoder.dist_head.0", "align_head.fc1", w, g.align_hidden)
    s.norm("encoder.dist_head.2", "align_head.norm", g.align_hidden)
    s.linear("encoder.dist_head.3", "align_head.fc_out", g.align_hidden, g.align_dim)
  # decoder
  d = g.dec_width
  s.conv("decoder.conv_in", "decoder.conv_in", 3, g.z, d)
  s.depthwise("decoder.attn.pos_embed", "decoder.pos_conv", d)
  for n in range(g.layers):
    s.block(f"decoder.attn.blocks.{n}", f"decoder.blocks.{n}", d, g.dec_heads, mix=True)
  cin, levels = d, len(g.ch_mult)
  for j, level in enumerate(reversed(range(levels))):
    s.linear(f"decoder.adaptive.{level}.gamma", f"decoder.adaptive.{j}.gamma", g.z, cin)
    s.linear(f"decoder.adaptive.{level}.beta", f"decoder.adaptive.{j}.beta", g.z, cin)
    cout = g.ch * g.ch_mult[level]
    for b in range(g.num_res_blocks + (g.num_res_extra if level > 0 else 0)):
      s.resblock(f"decoder.up.{level}.block.{b}", f"decoder.levels.{j}.{b}", cin, cout)
      cin = cout
    if level > 0:
      s.conv(f"decoder.up.{level}.upsample.conv1", f"decoder.upsample.{j}", 3, cin, 4 * cin)
  s.norm("decoder.norm_out", "decoder.norm_out", cin)
  s.conv("decoder.conv_out", "decoder.conv_out", 3, cin, 3)
  return s.entries


# ----------------------------------------------------------------------------- conversion


def _array(value) -> np.ndarray:
  """numpy view of a numpy / torch / jax array (torch: detached, on the CPU, float32)."""
  if hasattr(value, "detach"):   # a torch.Tensor, without importing torch
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def _raise(problems_: list[str], what: str) -> None:
  if problems_:
    raise ValueError(f"{len(problems_)} tensor(s) do not match {what}:\n  "
                     + "\n  ".join(problems_))


def to_authors(params: dict, config, *, keep_native_only: bool = False) -> dict[str, np.ndarray]:
  """Native {NNX path: array} -> {their MergeVQModel.state_dict() key: array in PyTorch
  shapes}. `recovery.*` is dropped, or with keep_native_only=True kept as
  `mergevq_jax.recovery.*` (native shapes). ValueError listing every missing, unexpected
  and mis-shaped native name."""
  entries = key_map(config)
  expected = {e.native: e.native_shape for e in entries.values()}
  found = []
  for name, shape in expected.items():
    if name not in params:
      found.append(f"missing: {name} {list(shape)}")
    elif tuple(np.shape(params[name])) != shape:
      found.append(f"wrong shape: {name} is {list(np.shape(params[name]))}, expected "
                   f"{list(shape)}")
  found += [f"unexpected: {name} {list(np.shape(v))}" for name, v in params.items()
            if name not in expected and not name.startswith(NATIVE_ONLY)]
  _raise(found, "the native parameters of this config")
  out = {theirs: np.ascontiguousarray(_FORWARD[e.kind](_array(params[e.native])))
         for theirs, e in entries.items()}
  if keep_native_only:
    out.update({EXTRA_PREFIX + name: np.ascontiguousarray(_array(v))
                for name, v in params.items() if name.startswith(NATIVE_ONLY)})
  return out


def ema_key(key: str) -> str:
  """Where their LitEma keeps the shadow of parameter `key` in a checkpoint."""
  return "model_ema." + key.replace(".", "")


def from_authors(tensors: dict, config, *, ema: bool = False) -> dict[str, np.ndarray]:
  """{their key: array} (a to_authors output or the 'state_dict' of their checkpoint) ->
  native {NNX path: array}. ema=True reads each weight from its `model_ema.*` shadow.
  Entries of AUTHORS_IGNORED are skipped; `mergevq_jax.*` entries are restored as native
  names. ValueError listing every missing, unexpected and mis-shaped key."""
  entries = key_map(config)
  source = {theirs: ema_key(theirs) if ema else theirs for theirs in entries}
  known = set(entries) | set(source.values())
  found = []
  for theirs, e in entries.items():
    key = source[theirs]
    if key not in tensors:
      found.append(f"missing: {key} {list(e.authors_shape)}")
    elif tuple(np.shape(tensors[key])) != e.authors_shape:
      found.append(f"wrong shape: {key} is {list(np.shape(tensors[key]))}, expected "
                   f"{list(e.authors_shape)}")
  found += [f"unexpected: {key} {list(np.shape(v))}" for key, v in tensors.items()
            if key not in known and not key.startswith(AUTHORS_IGNORED + (EXTRA_PREFIX,))]
  _raise(found, f"the authors' MergeVQModel of this config ({MODEL_CLASS})")
  out = {e.native: np.ascontiguousarray(_INVERSE[e.kind](_array(tensors[source[theirs]]),
                                                         e.native_shape))
         for theirs, e in entries.items()}
  out.update({key[len(EXTRA_PREFIX):]: np.ascontiguousarray(_array(v))
              for key, v in tensors.items() if key.startswith(EXTRA_PREFIX)})
  return out


# ----------------------------------------------------------------------------- YAML


def _candidates_name(config, g: _Geometry) -> str | None:
  """'gaussian-N' when model.keep_candidates / keep_probs are their gaussian-N set around K."""
  cands = tuple(int(k) for k in _get(config, "model.keep_candidates", ()))
  probs = tuple(float(p) for p in _get(config, "model.keep_probs", ()))
  n = len(cands)
  if n < 2:
    return None
  root = math.isqrt(g.num_keep)
  want = tuple((root + i) ** 2 for i in range(-1, n - 1))
  weights = [math.exp(-((i - 1) ** 2) / (2 * 0.5 ** 2)) + 0.05 for i in range(n)]
  want_p = [x / sum(weights) for x in weights]
  if cands == want and len(probs) == n and all(abs(a - b) < 1e-3 for a, b in zip(probs, want_p)):
    return f"gaussian-{n}"
  return None


def _num(x) -> str:
  """A number YAML 1.1 (PyYAML) reads back as a number: 1e-05 -> 1.0e-05."""
  if isinstance(x, bool) or isinstance(x, int):
    return str(x)
  s = repr(float(x))
  if "e" in s and "." not in s.split("e")[0]:
    s = s.replace("e", ".0e")
  return s


def yaml_snippet(config) -> str:
  """The `model:` section of the authors' configs/gpu_s1 YAML (LightningCLI class_path /
  init_args, also read by their reconstruct.py) for this config's architecture and the
  loss weights that have a counterpart. ValueError for an unsupported config."""
  check_supported(config)
  g = _geometry(config)
  heads = _heads(g)
  q = lambda key, default: _get(config, key, default)
  variant = q("model.variant", "")
  variant = f"{variant} " if variant else ""
  cand = _candidates_name(config, g)
  lines = [
      f"# MergeVQ model section for {AUTHORS_REPO} (configs/gpu_s1 format), written by",
      f"# mergevq_jax.export.authors for the {variant}tokenizer config; the weights file holds",
      "# MergeVQModel.state_dict() keys (encoder.*, decoder.*).",
      "model:",
      f"  class_path: {MODEL_CLASS}",
      "  init_args:",
      "    ddconfig:",
      "      double_z: False",
      f"      z_channels: {g.z}",
      f"      resolution: {g.image_size}",
      "      in_channels: 3",
      "      out_ch: 3",
      f"      ch: {g.ch}",
      f"      ch_mult: [{', '.join(str(k) for k in g.ch_mult)}]",
      f"      num_res_blocks: {g.num_res_blocks}",
      f"      num_res_extra: {g.num_res_extra}  # decoder levels > 0: num_res_blocks + this",
      f"      num_att_blocks: {g.layers}",
      f"      num_heads: {heads['num_heads']}",
  ]
  if "head_dim" in heads:
    lines.append(f"      head_dim: {heads['head_dim']}  # encoder {g.enc_heads} heads, "
                 f"decoder {g.dec_heads}")
  if g.vit:
    lines.append(f"      isotropic: {g.enc_width}  # ViT encoder (patch {g.patch})")
  if g.align_head:
    kind = "'layer3'" if g.align_head == "layer3" else "True"
    lines += [f"      dist_head: {kind}  # alignment head, hidden 4 x {g.enc_width}",
              f"      num_classes: {g.align_dim}"]
  else:
    lines.append("      dist_head: null  # no alignment head")
  lines.append(f"      merge_num: {g.num_tokens - g.num_keep}  # kept {g.num_keep} of "
               f"{g.num_tokens}")
  if cand:
    lines.append(f"      cand_distribution: '{cand}'  # training K candidates "
                 f"{list(_get(config, 'model.keep_candidates'))}")
  else:
    lines.append("      # cand_distribution: none (model.keep_candidates has no "
                 "'gaussian-N' equivalent)")
  lines += [
      "      model_path: null  # the exported weights replace their DINOv2 weight-selection "
      "init",
      "    k2lconfig:",
      "      learn_source: False  # our source-recovery weights have no counterpart",
      "    lossconfig:",
      "      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
      "      params:",
      "        disc_conditional: False",
      "        disc_in_channels: 3",
      f"        disc_start: {int(q('loss.disc_start', 0))}",
      "        disc_weight: 0.8  # their value; unused while gen_loss_weight is set",
      f"        disc_dim: {int(q('disc.base_channels', 64))}",
      f"        disc_num_layers: {int(q('disc.num_layers', 3))}",
      f"        gen_loss_weight: {_num(q('loss.gan_weight', 0.1))}",
      f"        cls_loss_weight: {_num(q('loss.align_weight', 1.0))}",
      f"        lecam_loss_weight: {_num(q('loss.lecam_weight', 0.01))}",
      f"        perceptual_weight: {_num(q('loss.lpips_weight', 1.0))}",
      f"        codebook_weight: {_num(q('quantizer.entropy_weight', 0.1))}",
      f"        commit_weight: {_num(q('quantizer.commit_weight', 0.25))}",
      "        codebook_enlarge_ratio: 0",
      "        codebook_enlarge_steps: 2000",
  ]
  if q("loss.pixel", "l1") != "l1":
    lines.append(f"        # loss.pixel={q('loss.pixel', 'l1')!r} here; theirs is always l1")
  lines += [
      f"    n_embed: {2 ** g.z}",
      f"    embed_dim: {g.z}",
      f"    learning_rate: {_num(q('train.lr', 1e-4))}",
      f"    sample_minimization_weight: {_num(q('quantizer.per_token_weight', 1.0))}",
      f"    batch_maximization_weight: {_num(q('quantizer.batch_weight', 1.0))}",
      '    scheduler_type: "None"',
      "    use_ema: False  # the file holds one set of weights (ours: the EMA when exported so)",
      "    pretrain_teacher: null  # 'facebook/dinov2-base' to fine-tune with the alignment "
      "loss",
  ]
  return "\n".join(lines) + "\n"
