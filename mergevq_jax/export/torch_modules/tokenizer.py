"""The MergeVQ stage-1 tokenizer in pure PyTorch: encoder + LFQ + S^T Z recovery + decoder
(+ alignment head, + learned source recovery), equal in function to
`mergevq_jax.models.tokenizer.Tokenizer`.

    model = MergeVQTokenizer.from_pretrained("export/tokenizer")  # `python -m mergevq_jax.export`
    # or: MergeVQTokenizer(json.load(open("run/config.json"))) + load_state_dict(native tensors)
    images_hat, enc = model.reconstruct(images, num_keep=144)       # images (B, 3, H, W)

Conventions:
  * images are NCHW float tensors in [-1, 1] (the JAX model takes NHWC; this port takes
    and returns NCHW, as PyTorch users expect); uint8 images convert with x / 127.5 - 1;
  * tokens (B, K, z_channels) in {-1, +1}; code indices (B, K) int64 in [0, 2^z_channels);
  * the source is carried as owner indices (B, L) int64 (which kept token each of the L
    grid positions belongs to, row-major); `EncodeOutput.source_matrix()` is the dense
    S (B, K, L); every method taking a source accepts either;
  * everything computes in float32, whatever `config["dtype"]` says (bfloat16 is a
    training setting of the JAX model; the exported parameters are float32);
  * `config["platform"]` (which selects JAX kernels) is ignored: plain torch ops compute the
    same maths on any device.

Parameters have the NNX names and shapes unchanged (`mergevq_jax.export.native`), so
`load_state_dict(strict=True)` checks a file against the model. Nothing here imports JAX.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mergevq_jax.export.torch_modules import layers, lfq, tome
from mergevq_jax.export.torch_modules.decoder import Decoder
from mergevq_jax.export.torch_modules.encoder import Encoder
from mergevq_jax.export.torch_modules.hub import FromPretrained, own_config
from mergevq_jax.export.torch_modules.recovery import SourceRecovery, SourceRecoveryOutput
# Geometry and checks are pure Python (no JAX), shared with the JAX model.
from mergevq_jax.models.hparams import (align_schedule, check_hparams, downsample_factor,
                                        encoder_width, num_tokens)


class EncodeOutput(NamedTuple):
  tokens: torch.Tensor    # (B, K, d) quantised tokens in {-1,+1} (straight-through)
  indices: torch.Tensor   # (B, K) int64 code indices in [0, 2^d)
  owner: torch.Tensor     # (B, L) int64 source index; S = source_matrix()
  cls: torch.Tensor       # (B, width) [CLS] feature
  z: torch.Tensor         # (B, K, d) pre-quantisation latents
  size: torch.Tensor      # (B, K) float32 positions per kept token
  lfq: lfq.LFQOutput      # losses: commit_loss, per_token/batch entropy, entropy_loss

  @property
  def num_keep(self) -> int:
    return self.tokens.shape[1]

  def source_matrix(self, dtype=torch.float32) -> torch.Tensor:
    """Dense S in {0,1}^{B x K x L}."""
    return tome.source_matrix(self.owner, self.num_keep, dtype)


class MergeVQTokenizer(FromPretrained, nn.Module):
  """MergeVQ tokenizer built from the run's config as a plain nested dict (the
  `config.json` of a run directory, i.e. `ConfigDict.to_dict()`), or loaded with
  `MergeVQTokenizer.from_pretrained(export_dir)`; see the module docstring for conventions."""

  stage = "tokenizer"

  def __init__(self, config: dict):
    super().__init__()
    self.config = own_config(config, check_hparams)
    m = self.config["model"]
    self.encoder = Encoder(m)
    self.decoder = Decoder(m)
    self.align_head = (layers.MLPHead(encoder_width(m), m["align_hidden"], m["align_dim"],
                                      m["align_head"]) if m["align_head"] else None)
    self.recovery = (SourceRecovery(m["recovery"], m["z_channels"], self.num_tokens)
                     if m["recovery"]["enabled"] else None)

  # ------------------------------------------------------------------ geometry
  @property
  def downsample(self) -> int:
    """Image side / token-grid side."""
    return downsample_factor(self.config["model"])

  @property
  def num_tokens(self) -> int:
    """L, the number of grid positions (tokens before merging) at model.image_size."""
    return num_tokens(self.config["model"])

  @property
  def grid(self) -> tuple[int, int]:
    """(h, w) of the token grid at model.image_size."""
    side = self.config["model"]["image_size"] // self.downsample
    return side, side

  def schedule(self, num_keep: int, num_tokens: int | None = None) -> tuple[int, ...]:
    """Per-block merge counts taking L (default self.num_tokens) tokens down to num_keep."""
    return tome.merge_schedule(self.config["model"]["num_layers"],
                               num_tokens or self.num_tokens, num_keep)

  # ------------------------------------------------------------------ checks
  def check_images(self, images, exact_size: bool = True) -> None:
    """ValueError unless images are (B, 3, H, W) float tensors of the configured size."""
    shape = tuple(images.shape) if hasattr(images, "shape") else None
    if not isinstance(images, torch.Tensor) or len(shape) != 4:
      raise ValueError(f"images must be a rank-4 NCHW torch tensor (B, 3, H, W), got "
                       f"{type(images).__name__} of shape {shape}")
    if shape[1] != 3:
      raise ValueError(f"images must have 3 channels in axis 1 (NCHW), got shape {shape}")
    if not images.is_floating_point():
      raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}; "
                       f"convert uint8 with x / 127.5 - 1")
    size = self.config["model"]["image_size"]
    if exact_size and shape[2:] != (size, size):
      raise ValueError(f"images must be {size}x{size} for this config, got "
                       f"{shape[2]}x{shape[3]}")
    if shape[2] % self.downsample or shape[3] % self.downsample:
      raise ValueError(f"image size {shape[2]}x{shape[3]} is not divisible by the "
                       f"downsampling factor {self.downsample}")

  def _owner(self, source: torch.Tensor, num_keep: int, batch: int) -> torch.Tensor:
    L = self.num_tokens
    if source.ndim == 2 and not source.is_floating_point() and not source.is_complex():
      owner = source.long()
    elif source.ndim == 3:
      if source.shape[1] != num_keep:
        raise ValueError(f"source matrix has {source.shape[1]} rows but there are "
                         f"{num_keep} tokens")
      owner = tome.owner_from_source(source)
    else:
      raise ValueError(f"source must be owner indices (B, L) int or a matrix (B, K, L), got "
                       f"shape {tuple(source.shape)} dtype {source.dtype}")
    if tuple(owner.shape) != (batch, L):
      raise ValueError(f"source covers {owner.shape[-1]} positions for batch "
                       f"{owner.shape[0]}; expected ({batch}, L={L})")
    return owner

  # ------------------------------------------------------------------ API
  def encode(self, images: torch.Tensor, num_keep: int) -> EncodeOutput:
    """images (B, 3, H, W) in [-1, 1] -> K quantised tokens, code indices, source (owner),
    [CLS], latents, sizes and LFQ losses."""
    self.check_images(images)
    out = self.encoder(images.float(), self.schedule(num_keep))
    q = self.config["quantizer"]
    quant = lfq.lfq(out.z, tau=q["tau"], per_token_weight=q["per_token_weight"],
                    batch_weight=q["batch_weight"], entropy_mode=q["entropy_mode"],
                    group_size=q["group_size"])
    return EncodeOutput(tokens=quant.quantized, indices=quant.indices,
                        owner=out.owner.contiguous(), cls=out.cls, z=out.z, size=out.size,
                        lfq=quant)

  def decode(self, tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """tokens (B, K, d), source (B, L) owner indices or (B, K, L) matrix -> images
    (B, 3, H, W), roughly in [-1, 1]."""
    d = self.config["model"]["z_channels"]
    if tokens.ndim != 3 or tokens.shape[-1] != d:
      raise ValueError(f"tokens must be (B, K, {d}), got {tuple(tokens.shape)}")
    owner = self._owner(source, tokens.shape[1], tokens.shape[0])
    full = tome.unmerge(tokens.float(), owner)                        # (B, L, d)
    z = full.transpose(1, 2).reshape(tokens.shape[0], d, *self.grid)  # (B, d, h, w)
    return self.decoder(z)

  def decode_indices(self, indices: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Code indices (B, K) integer + source -> images (B, 3, H, W)."""
    if indices.ndim != 2 or indices.is_floating_point() or indices.is_complex():
      raise ValueError(f"indices must be (B, K) integers, got {tuple(indices.shape)} "
                       f"{indices.dtype}")
    return self.decode(lfq.indices_to_bits(indices, self.config["model"]["z_channels"]),
                       source)

  def reconstruct(self, images: torch.Tensor, num_keep: int
                  ) -> tuple[torch.Tensor, EncodeOutput]:
    """images (B, 3, H, W) -> (reconstruction (B, 3, H, W), the EncodeOutput)."""
    enc = self.encode(images, num_keep)
    return self.decode(enc.tokens, enc.owner), enc

  def forward(self, images: torch.Tensor, num_keep: int) -> tuple[torch.Tensor, EncodeOutput]:
    """Same as `reconstruct`."""
    return self.reconstruct(images, num_keep)

  def align(self, images: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Alignment-head output on the [CLS] token, (B, align_dim).

    images (B, 3, H, W) of any size divisible by the downsampling factor; the merge
    schedule follows model.align_merge (`hparams.align_schedule`, as the JAX model).
    """
    if self.align_head is None:
      raise ValueError("this config has no alignment head (model.align_head = '')")
    self.check_images(images, exact_size=False)
    L = (images.shape[2] // self.downsample) * (images.shape[3] // self.downsample)
    self.schedule(num_keep)
    out = self.encoder(images.float(), align_schedule(self.config["model"], L, num_keep))
    return self.align_head(out.cls)

  def recover_source(self, tokens: torch.Tensor) -> SourceRecoveryOutput:
    """Predict the source from K tokens (B, K, d) alone: logits (B, K, L), owner (B, L)."""
    if self.recovery is None:
      raise ValueError("this config has no source-recovery module (model.recovery.enabled)")
    return self.recovery(tokens.float())
