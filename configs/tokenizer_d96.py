"""Large G+R-shaped tokenizer from the reference code ("d96"): ch 96 x (1,1,2,4,8),
transformer 768 wide with 12 heads, /16 -> L=256, K=144."""
from mergevq_jax.config import apply_platform, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  config = tokenizer_defaults()
  m = config.model
  m.variant = "G+R-d96"
  m.ch = 96
  m.num_heads = 12
  m.decoder_num_heads = 12
  m.align_hidden = 3072
  return apply_platform(config, platform)
