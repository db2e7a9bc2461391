"""MergeAR-L (LlamaGen-L body: 24 layers x 1024, 16 heads, SwiGLU) for the G+R tokenizer
(16x16 codes, K=144; merge instructions 121..256). Train on the output of
`python -m mergevq_jax.tokenize`:

  python -m mergevq_jax.main --config=configs/mergear_l.py:tpu --workdir=DIR \
      --config.data.codes_dir=CODES
"""
from mergevq_jax.config import apply_platform
from mergevq_jax.config.mergear import llama_ffn_dim, mergear_defaults


def get_config(platform=None):
  config = mergear_defaults()
  m = config.model
  m.variant = "L"
  m.num_layers = 24
  m.width = 1024
  m.num_heads = 16
  m.ffn_dim = llama_ffn_dim(1024)
  return apply_platform(config, platform)
