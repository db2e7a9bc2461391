"""MergeAR-XL (LlamaGen-XL body: 36 layers x 1280, 20 heads, SwiGLU) for the G+R tokenizer
(16x16 codes, K=144; merge instructions 121..256). Train on the output of
`python -m mergevq_jax.tokenize`:

  python -m mergevq_jax.main --config=configs/mergear_xl.py:tpu --workdir=DIR \
      --config.data.codes_dir=CODES
"""
from mergevq_jax.config import apply_platform
from mergevq_jax.config.mergear import llama_ffn_dim, mergear_defaults


def get_config(platform=None):
  config = mergear_defaults()
  m = config.model
  m.variant = "XL"
  m.num_layers = 36
  m.width = 1280
  m.num_heads = 20
  m.ffn_dim = llama_ffn_dim(1280)
  return apply_platform(config, platform)
