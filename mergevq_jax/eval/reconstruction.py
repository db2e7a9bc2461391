"""Reconstruction evaluation on a fixed batch: PSNR per K and codebook statistics."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mergevq_jax.eval import codebook
from mergevq_jax.eval.metrics import psnr


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
