"""Small G+R-shaped tokenizer from the reference code ("d32"): ch 32 x (2,2,4,8,12),
transformer 384 wide with 6 heads, /16 -> L=256, K=144."""
from mergevq_jax.config import apply_platform, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  config = tokenizer_defaults()
  m = config.model
  m.variant = "G+R-d32"
  m.ch = 32
  m.ch_mult = (2, 2, 4, 8, 12)
  m.num_heads = 6
  m.decoder_num_heads = 6
  m.align_hidden = 1536
  return apply_platform(config, platform)
