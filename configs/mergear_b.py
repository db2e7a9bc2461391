"""MergeAR-B (LlamaGen-B body: 12 layers x 768, 12 heads, SwiGLU) for the G+R tokenizer
(16x16 codes, K=144; merge instructions 121..256). Train on the output of
`python -m mergevq_jax.tokenize`:

  python -m mergevq_jax.main --config=configs/mergear_b.py:tpu --workdir=DIR \
      --config.data.codes_dir=CODES
"""
from mergevq_jax.config import apply_platform
from mergevq_jax.config.mergear import llama_ffn_dim, mergear_defaults


def get_config(platform=None):
  config = mergear_defaults()
  m = config.model
  m.variant = "B"
  m.num_layers = 12
  m.width = 768
  m.num_heads = 12
  m.ffn_dim = llama_ffn_dim(768)
  return apply_platform(config, platform)
