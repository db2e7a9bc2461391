"""Tiny G+R-shaped tokenizer for CPU tests and demos: 64x64 images, CNN ch 32 x (1,1,2,2),
/8 -> L=64, 4 ToMe blocks 64 wide, K=36 of 64. A forward pass takes milliseconds; training
(200 steps at batch 8 on the offline sample photos) takes a few minutes on 2 CPU cores.
configs/demo_cpu.py builds on it."""
from mergevq_jax.config import apply_platform, keep_candidates, keep_probs, tokenizer_defaults


def get_config(platform=None):
  """platform: 'cpu', 'gpu' or 'tpu' preset (`--config=<this file>:gpu`), default as is."""
  config = tokenizer_defaults()
  m = config.model
  m.variant = "tiny"
  m.image_size = 64
  m.ch = 32
  m.ch_mult = (1, 1, 2, 2)
  m.num_res_blocks = 1
  m.num_layers = 4
  m.num_heads = 4
  m.decoder_num_heads = 4
  m.num_keep = 36
  m.keep_candidates = keep_candidates(36, 4)   # 25, 36, 49, 64
  m.keep_probs = keep_probs(4)
  m.align_hidden = 128
  m.recovery.width = 64
  m.recovery.num_heads = 4
  m.recovery.mlp_dim = 128
  t = config.train
  t.batch_size = 8
  t.steps = 200
  t.lr = 1e-3
  t.log_every = 10
  t.eval_every = 100
  t.ckpt_every = 100
  return apply_platform(config, platform)
