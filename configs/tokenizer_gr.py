"""MergeVQ G+R tokenizer (ImageNet 256x256): CNN ch 64 x (1,1,2,4,8) + 12 ToMe blocks
(512 wide, 8 heads), /16 -> L=256, K=144. Paper Table A1: encoder 62.7M, decoder 83.4M."""
from mergevq_jax.config import apply_platform, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  return apply_platform(tokenizer_defaults(), platform)  # the defaults are G+R
