"""Reconstruction evaluation of a tokenizer.

`evaluate`: one fixed batch (PSNR per K, codebook statistics, the reconstructions) -- the
trainer's quick look every `eval_every` steps.

`ReconstructionEval`: a whole image set, streamed batch by batch (constant memory in N),
per merge instruction K and per source ('gt': the encoder's own source matrix;
'recovered': the learned source recovery's prediction from the K tokens alone): rFID
against the real images (or given reference statistics), PSNR, SSIM, LPIPS, codebook
usage and perplexity. Statistics are summed over processes in `result()`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mergevq_jax.eval import batches, codebook, fid
from mergevq_jax.eval.metrics import psnr
from mergevq_jax.progress import Progress


def evaluate(recon_fn, params, images, eval_keeps) -> dict:
  """PSNR per K (`psnr_k<K>`), codebook usage, codes seen and perplexity over all K, and
  the reconstructions (`recon`: {K: (B, H, W, 3) array}).

  recon_fn(params, images, num_keep=K) -> (reconstructions, EncodeOutput).
  """
  out = {"recon": {}}
  counts = None
  for k in eval_keeps:
    recon, enc = recon_fn(params, images, num_keep=k)
    out[f"psnr_k{k}"] = float(psnr(recon, images))
    out["recon"][k] = np.asarray(recon)
    hist = codebook.code_histogram(enc.indices, enc.tokens.shape[-1])
    counts = hist if counts is None else counts + hist
  out["codebook_usage"] = float(codebook.codebook_usage(counts))
  out["codes_seen"] = int(jnp.sum(counts > 0))
  out["perplexity"] = float(codebook.perplexity(counts))
  return out


def reconstruct_fn(graphdef: nnx.GraphDef, with_recovered: bool):
  """Jitted (params, images, num_keep) -> ({'gt': recon[, 'recovered': recon]}, indices,
  per-image extras {'recovered': {'source_accuracy': (B,)}}: the fraction of the L
  positions the recovery assigns to their true kept token)."""

  def fn(params, images, num_keep):
    tok = nnx.merge(graphdef, params)
    enc = tok.encode(images, num_keep)
    out, extras = {"gt": tok.decode(enc.tokens, enc.owner)}, {}
    if with_recovered:
      owner = tok.recover_source(enc.tokens).owner
      out["recovered"] = tok.decode(enc.tokens, owner)
      extras["recovered"] = {"source_accuracy": jnp.mean(owner == enc.owner, axis=1)}
    return out, enc.indices, extras

  return jax.jit(fn, static_argnames=("num_keep",))


class _Sums:
  """Per-image metric sums and Inception statistics of one (K, source)."""

  def __init__(self, dim: int | None):
    self.n = 0
    self.sums: dict[str, float] = {}
    self.stats = fid.FeatureStats(dim) if dim else None


class ReconstructionEval:
  """Accumulate reconstruction metrics over batches; `result()` -> {K: {...}}."""

  def __init__(self, nets, keeps, code_bits: int, sources=("gt",), reference=None):
    self.nets, self.keeps, self.code_bits = nets, tuple(keeps), code_bits
    self.sources = tuple(sources)
    self.reference = reference
    dim = fid.FEATURE_DIM if nets.has_inception else None
    self.real = fid.FeatureStats(dim) if dim and reference is None else None
    self.sums = {(k, s): _Sums(dim) for k in self.keeps for s in self.sources}
    self.counts = {k: np.zeros((2 ** code_bits,), np.int64) for k in self.keeps}

  def add_real(self, images: jax.Array, n: int) -> None:
    """Inception statistics of the real images (skipped when a reference is given)."""
    if self.real is not None:
      self.real.update(batches.local_rows(self.nets.features(images)["pool3"])[:n])

  def add(self, k: int, recons: dict, indices: jax.Array, target: jax.Array, n: int,
          extras: dict | None = None) -> None:
    """One batch of reconstructions at K: recons {source: (B, H, W, 3) global array};
    extras {source: {name: (B,) per-image values}} are averaged like the metrics."""
    for s in self.sources:
      acc = self.sums[(k, s)]
      per_image = {**self.nets.pairs(recons[s], target), **(extras or {}).get(s, {})}
      for name, v in per_image.items():
        acc.sums[name] = acc.sums.get(name, 0.0) + float(
            np.sum(batches.local_rows(v)[:n], dtype=np.float64))
      if acc.stats is not None:
        acc.stats.update(batches.local_rows(self.nets.features(recons[s])["pool3"])[:n])
      acc.n += n
    idx = batches.local_rows(indices)[:n].reshape(-1)
    self.counts[k] += np.bincount(idx, minlength=2 ** self.code_bits)

  def result(self) -> dict:
    sum_all = batches.sum_across_processes
    ref = None
    if self.reference is not None:
      ref = (self.reference.mu, self.reference.sigma)
    elif self.real is not None:
      real = fid.FeatureStats.from_arrays(sum_all(self.real.as_arrays()), self.real.dim)
      ref = real.mean_cov(what="real images")
    out = {}
    for k in self.keeps:
      counts = sum_all(self.counts[k])
      row = {"codebook_usage": float(np.mean(counts > 0)), "codes_seen": int(np.sum(counts > 0)),
             "perplexity": float(codebook.perplexity(jnp.asarray(counts)))}
      for s in self.sources:
        acc = self.sums[(k, s)]
        n = int(sum_all(np.asarray([acc.n]))[0])
        vals = {name: float(sum_all(np.asarray([v]))[0]) / n for name, v in acc.sums.items()}
        if acc.stats is not None and ref is not None:
          stats = fid.FeatureStats.from_arrays(sum_all(acc.stats.as_arrays()), acc.stats.dim)
          vals["rfid"] = fid.frechet_distance(*stats.mean_cov(what="reconstructions"), *ref)
        vals["num_images"] = n
        if s == "gt":
          row.update(vals)
        else:
          row[s] = vals
      out[k] = row
    return out


def evaluate_set(recon, params, nets, source, num_images: int, keeps, *, image_size: int,
                 batch: int, code_bits: int, sources=("gt",), reference=None,
                 on_first_batch=None, progress: bool = False) -> dict:
  """Stream the first `num_images` eval views of `source` (split over processes, batches
  of `batch` per process on nets.mesh) through `recon` (`reconstruct_fn`) at every K;
  returns `ReconstructionEval.result()`. on_first_batch(images, {(K, source): recon})
  gets this process's first batch (real rows only), e.g. for a picture."""
  acc = ReconstructionEval(nets, keeps, code_bits, sources, reference)
  mine = batches.process_slice(num_images)
  batch = batches.fit_batch(batch, num_images, nets.mesh)
  bar = Progress(len(mine), unit="image", label="evaluate") if progress else None
  first = True
  for images, real, _ in batches.eval_view_batches(source, mine, image_size, batch,
                                                   batches.num_batches(num_images, batch)):
    x = batches.to_global(images, nets.mesh)
    acc.add_real(x, real)
    shown = {}
    for k in keeps:
      outs, indices, extras = recon(params, x, num_keep=k)
      acc.add(k, outs, indices, x, real, extras)
      if first and on_first_batch is not None:
        shown.update({(k, s): batches.local_rows(v)[:real] for s, v in outs.items()})
    if first and on_first_batch is not None and real:
      on_first_batch(images[:real], shown)
    first = False
    if bar is not None:
      bar.update(real)
  if bar is not None:
    bar.close()
  return acc.result()


def reconstruct_images(tokenizer, images: np.ndarray, keeps, recovered: bool, lpips=None
                       ) -> dict:
  """{K: {'recon', 'owner', 'anchor', 'indices', 'size', 'psnr', 'lpips'?, 'recovered'?}}
  as numpy, for images (N, S, S, 3) in [-1, 1]."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from mergevq_jax.eval.metrics import psnr_per_image
  graphdef, state = nnx.split(tokenizer)
  lp = jax.jit(lpips) if lpips is not None else None
  out = {}
  for k in keeps:
    def run(state, x, k=k):
      tok = nnx.merge(graphdef, state)
      enc = tok.encode(x, k)
      rec = tok.decode(enc.tokens, enc.owner)
      res = {"recon": rec, "owner": enc.owner, "anchor": enc.anchor, "indices": enc.indices,
             "size": enc.size, "psnr": psnr_per_image(rec, x)}
      if recovered:
        owner = tok.recover_source(enc.tokens).owner
        rec2 = tok.decode(enc.tokens, owner)
        res["recovered"] = {"recon": rec2, "owner": owner, "psnr": psnr_per_image(rec2, x),
                            "source_accuracy": jnp.mean(owner == enc.owner, axis=1)}
      return res
    res = jax.tree.map(np.asarray, jax.jit(run)(state, jnp.asarray(images)))
    if lp is not None:
      res["lpips"] = np.asarray(lp(jnp.asarray(res["recon"]), jnp.asarray(images)))
    out[k] = res
  return out
