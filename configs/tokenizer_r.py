"""MergeVQ R tokenizer (representation-oriented): plain ViT-B/16 encoder (768 wide, 12 heads),
L=256, K=36 (paper; the reference code trains around 64). Decoder as G+R.
Paper Table A1: encoder 86.6M, decoder 83.4M."""
from mergevq_jax.config import apply_platform, keep_candidates, keep_probs, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  config = tokenizer_defaults()
  m = config.model
  m.variant = "R"
  m.encoder_type = "vit"
  m.patch_size = 16
  m.width = 768
  m.num_heads = 12
  m.num_keep = 36
  m.keep_candidates = keep_candidates(64, 6)   # 49, 64, ..., 144 as the reference code
  m.keep_probs = keep_probs(6)
  m.align_hidden = 3072  # 4 x width, as the reference code's head
  return apply_platform(config, platform)
