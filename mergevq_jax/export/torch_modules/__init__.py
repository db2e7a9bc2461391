"""MergeVQ in pure PyTorch (no JAX, no Lightning, no taming): the stage-1 tokenizer and the
MergeAR generator, loaded from an export directory (`python -m mergevq_jax.export`).

  from mergevq_jax.export.torch_modules import MergeVQTokenizer, MergeAR
  tok = MergeVQTokenizer.from_pretrained("export/tokenizer")   # eval mode, float32
  rec, enc = tok.reconstruct(images, num_keep=144)            # images (B, 3, H, W) in [-1, 1]
  ar = MergeAR.from_pretrained("export/mergear")
  codes, stats = ar.generate([207, 360], num_keep=144, cfg_scale=4.0, seed=0)
  images = tok.decode_indices(codes, ...)                     # see MergeVQTokenizer

Parameters carry the names and shapes of the JAX model (the native layout,
`mergevq_jax/export/native.py`); the computation is float32 whatever the run's dtype.
Needs torch and safetensors; numpy; nothing else.
"""
from .ar import MergeAR
from .tokenizer import EncodeOutput, MergeVQTokenizer

__all__ = ["EncodeOutput", "MergeAR", "MergeVQTokenizer"]
