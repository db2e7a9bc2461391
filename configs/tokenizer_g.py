"""MergeVQ G tokenizer (generation-oriented): CNN ch 64 x (1,2,4,8), /8 -> L=1024, K=256.
Paper Table A1: encoder 62.3M, decoder 82.8M; alignment weight 0.1, head 512->2048->LN->768."""
from mergevq_jax.config import apply_platform, keep_candidates, keep_probs, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  config = tokenizer_defaults()
  m = config.model
  m.variant = "G"
  m.ch_mult = (1, 2, 4, 8)
  m.num_keep = 256
  m.keep_candidates = keep_candidates(256, 9)  # 225, 256, ..., 529 as the reference code
  m.keep_probs = keep_probs(9)
  m.align_head = "layer2_ln"
  return apply_platform(config, platform)
