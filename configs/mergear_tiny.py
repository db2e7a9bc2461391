"""Tiny MergeAR for CPU tests and the demo: 4 layers x 128, 4 heads, on the 8x8 code grid
of configs/tokenizer_tiny.py / demo_cpu.py (merge instructions 25, 36, 49, 64).
Trains in about 3.5 minutes on 2 CPU cores (0.25 s per step)."""
from mergevq_jax.config import apply_platform
from mergevq_jax.config.mergear import mergear_defaults


def get_config(platform=None):
  config = mergear_defaults()
  m = config.model
  m.variant = "tiny"
  m.num_layers = 4
  m.width = 128
  m.num_heads = 4
  m.ffn_dim = 384
  m.grid = (8, 8)
  m.keep_values = (25, 36, 49, 64)
  m.window = 4
  m.num_classes = 16
  t = config.train
  t.batch_size = 32
  t.steps = 800
  t.lr = 2e-3
  t.weight_decay = 0.0
  t.warmup_steps = 50
  t.schedule = "cosine"
  t.log_every = 25
  t.sample_every = 400
  t.ckpt_every = 400
  t.keep_ckpts = 2
  config.sample.num_classes_shown = 8
  config.sample.cfg_scale = 3.0
  config.sample.top_p = 0.8
  return apply_platform(config, platform)
