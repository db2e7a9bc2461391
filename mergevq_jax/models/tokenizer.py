"""The MergeVQ tokenizer: encoder + LFQ + S^T Z recovery + decoder (+ alignment head,
+ learned source recovery); its token geometry and hyperparameter checks are pure Python
(`mergevq_jax.models.hparams`, shared with the PyTorch port) and re-exported here.

Images are NHWC float in [-1, 1]. K (`num_keep`) is a static Python int: under jit,
one compiled function per K (see `jit_method`). The module reads `config.model`,
`config.quantizer`, `config.dtype` and `config.platform` (which selects the ops'
implementation, `mergevq_jax.ops`); the config schema is `mergevq_jax.config.tokenizer`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mergevq_jax.models import layers, lfq, tome
from mergevq_jax.models.layers import compute_dtype
from mergevq_jax.models.decoder import Decoder
from mergevq_jax.models.encoder import Encoder
# Geometry and checks are pure Python, shared with the PyTorch port; re-exported here.
from mergevq_jax.models.hparams import (GROUPS, align_schedule, check_hparams,  # noqa: F401
                                        downsample_factor, encoder_width, num_tokens)
from mergevq_jax.models.recovery import SourceRecovery, SourceRecoveryOutput


class EncodeOutput(NamedTuple):
  tokens: jax.Array       # (B, K, d) quantised tokens in {-1,+1} (straight-through)
  indices: jax.Array      # (B, K) int32 code indices in [0, 2^d)
  owner: jax.Array        # (B, L) int32 source index; S = source_matrix()
  cls: jax.Array          # (B, width) [CLS] feature
  z: jax.Array            # (B, K, d) pre-quantisation latents
  size: jax.Array         # (B, K) positions per kept token
  lfq: lfq.LFQOutput      # losses: commit_loss, per_token/batch entropy, entropy_loss
  anchor: jax.Array       # (B, K) int32 original position of each kept token's own patch

  @property
  def num_keep(self) -> int:
    return self.tokens.shape[1]

  def source_matrix(self, dtype=jnp.float32) -> jax.Array:
    """Dense S in {0,1}^{B x K x L}."""
    return tome.source_matrix(self.owner, self.num_keep, dtype)


class Tokenizer(nnx.Module):

  def __init__(self, config, *, rngs: nnx.Rngs):
    check_hparams(config)
    config = ml_collections.FrozenConfigDict(config)
    self.config = config
    m = config.model
    dtype = compute_dtype(config.dtype)
    self.encoder = Encoder(m, dtype=dtype, platform=config.platform, rngs=rngs)
    self.decoder = Decoder(m, dtype=dtype, platform=config.platform, rngs=rngs)
    width = encoder_width(m)
    self.align_head = (layers.MLPHead(width, m.align_hidden, m.align_dim, m.align_head,
                                      dtype=dtype, rngs=rngs) if m.align_head else None)
    self.recovery = (SourceRecovery(m.recovery, m.z_channels, self.num_tokens, dtype=dtype,
                                    rngs=rngs)
                     if m.recovery.enabled else None)

  # ------------------------------------------------------------------ geometry
  @property
  def downsample(self) -> int:
    return downsample_factor(self.config.model)

  @property
  def num_tokens(self) -> int:
    return num_tokens(self.config.model)

  @property
  def grid(self) -> tuple[int, int]:
    side = self.config.model.image_size // self.downsample
    return side, side

  def schedule(self, num_keep: int, num_tokens: int | None = None) -> tuple[int, ...]:
    return tome.merge_schedule(self.config.model.num_layers, num_tokens or self.num_tokens,
                               num_keep)

  # ------------------------------------------------------------------ checks
  def check_images(self, images, exact_size: bool = True) -> None:
    """ValueError unless images are (B, H, W, 3) floats of the configured size."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"images must be a rank-4 NHWC array (B, H, W, 3), got shape {shape}")
    if shape[-1] != 3:
      raise ValueError(f"images must have 3 channels in the last axis (NHWC), got shape {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}; "
                       f"convert uint8 with x / 127.5 - 1")
    size = self.config.model.image_size
    if exact_size and tuple(shape[1:3]) != (size, size):
      raise ValueError(f"images must be {size}x{size} for this config, got "
                       f"{shape[1]}x{shape[2]}")
    if shape[1] % self.downsample or shape[2] % self.downsample:
      raise ValueError(f"image size {shape[1]}x{shape[2]} is not divisible by the "
                       f"downsampling factor {self.downsample}")

  # ------------------------------------------------------------------ API
  def encode(self, images: jax.Array, num_keep: int) -> EncodeOutput:
    """images (B, H, W, 3) -> K quantised tokens, code indices, source, [CLS], losses."""
    self.check_images(images)
    schedule = self.schedule(num_keep)
    out = self.encoder(images, schedule)
    q = self.config.quantizer
    quant = lfq.lfq(out.z.astype(jnp.float32), tau=q.tau, per_token_weight=q.per_token_weight,
                    batch_weight=q.batch_weight, entropy_mode=q.entropy_mode,
                    group_size=q.group_size)
    return EncodeOutput(tokens=quant.quantized, indices=quant.indices, owner=out.owner,
                        cls=out.cls, z=out.z, size=out.size, lfq=quant, anchor=out.anchor)

  def _owner(self, source: jax.Array, num_keep: int, batch: int) -> jax.Array:
    L = self.num_tokens
    if source.ndim == 2 and jnp.issubdtype(source.dtype, jnp.integer):
      owner = source
    elif source.ndim == 3:
      if source.shape[1] != num_keep:
        raise ValueError(f"source matrix has {source.shape[1]} rows but there are "
                         f"{num_keep} tokens")
      owner = tome.owner_from_source(source)
    else:
      raise ValueError(f"source must be owner indices (B, L) int or a matrix (B, K, L), got "
                       f"shape {source.shape} dtype {source.dtype}")
    if owner.shape != (batch, L):
      raise ValueError(f"source covers {owner.shape[-1]} positions for batch "
                       f"{owner.shape[0]}; expected ({batch}, L={L})")
    return owner

  def decode(self, tokens: jax.Array, source: jax.Array) -> jax.Array:
    """tokens (B, K, d), source (B, L) owner indices or (B, K, L) matrix -> images."""
    if tokens.ndim != 3 or tokens.shape[-1] != self.config.model.z_channels:
      raise ValueError(f"tokens must be (B, K, {self.config.model.z_channels}), got "
                       f"{tokens.shape}")
    owner = self._owner(source, tokens.shape[1], tokens.shape[0])
    full = tome.unmerge(tokens, owner)
    b = tokens.shape[0]
    return self.decoder(full.reshape(b, *self.grid, full.shape[-1]))

  def decode_indices(self, indices: jax.Array, source: jax.Array) -> jax.Array:
    """Code indices (B, K) int + source -> images."""
    if indices.ndim != 2 or not jnp.issubdtype(indices.dtype, jnp.integer):
      raise ValueError(f"indices must be (B, K) integers, got {indices.shape} {indices.dtype}")
    return self.decode(lfq.indices_to_bits(indices, self.config.model.z_channels), source)

  def reconstruct(self, images: jax.Array, num_keep: int) -> tuple[jax.Array, EncodeOutput]:
    enc = self.encode(images, num_keep)
    return self.decode(enc.tokens, enc.owner), enc

  def align(self, images: jax.Array, num_keep: int) -> jax.Array:
    """Alignment-head output on the [CLS] token of a (strong) view, (B, align_dim).

    Any image size divisible by the downsampling factor (e.g. 224 crops); the merge
    schedule follows model.align_merge (`hparams.align_schedule`): by default the r list
    of K at the training resolution, as the authors' encoder does.
    """
    if self.align_head is None:
      raise ValueError("this config has no alignment head (model.align_head = '')")
    self.check_images(images, exact_size=False)
    L = (images.shape[1] // self.downsample) * (images.shape[2] // self.downsample)
    self.schedule(num_keep)   # ValueError if K is not reachable at the training resolution
    out = self.encoder(images, align_schedule(self.config.model, L, num_keep))
    return self.align_head(out.cls)

  def probe_features(self, images: jax.Array) -> dict[str, jax.Array]:
    """Encoder features with every token kept (no merging), for a linear probe:
    {'cls': the [CLS] token (B, width), 'mean': the mean of the L patch tokens (B, width)},
    both the transformer's output before the quantiser's projection."""
    self.check_images(images, exact_size=False)
    L = (images.shape[1] // self.downsample) * (images.shape[2] // self.downsample)
    x, _ = self.encoder.transformer(images, self.schedule(L, L))
    return {"cls": x[:, 0], "mean": jnp.mean(x[:, 1:], axis=1)}

  def recover_source(self, tokens: jax.Array) -> SourceRecoveryOutput:
    """Predict the source from K tokens alone (generation without ground-truth S)."""
    if self.recovery is None:
      raise ValueError("this config has no source-recovery module (model.recovery.enabled)")
    return self.recovery(tokens)


def jit_method(graphdef: nnx.GraphDef, name: str, static_argnames=("num_keep",), **jit_kwargs):
  """jax.jit of `Tokenizer.<name>` as a pure function of (state, *args).

  Shape and K checks run at trace time, before XLA compiles anything; one compilation
  is cached per distinct static K.
  """
  @functools.partial(jax.jit, static_argnames=static_argnames, **jit_kwargs)
  def fn(state, *args, **kwargs):
    return getattr(nnx.merge(graphdef, state), name)(*args, **kwargs)
  return fn
