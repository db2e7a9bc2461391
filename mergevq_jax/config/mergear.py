"""The MergeAR config (stage 'mergear'): the schema every configs/mergear_*.py starts from,
and validation.

A MergeAR config file does `config = mergear_defaults(); config.model.width = ...`.
`validate_mergear_config` rejects unknown keys and values that cannot work, with a
ValueError naming the key, before anything is traced; the model's own hyperparameter
checks are `mergevq_jax.models.ar.mergear.check_hparams`.
"""
from __future__ import annotations

import ml_collections

from mergevq_jax.config.common import check_at_least, validate_common
from mergevq_jax.models.ar.mergear import check_hparams
from mergevq_jax.sharding import DEFAULT_RULES

STAGE = "mergear"
SCHEMA = "mergevq_jax/config/mergear.py:mergear_defaults"   # named in error messages


def llama_ffn_dim(width: int, multiple_of: int = 256) -> int:
  """LlamaGen's SwiGLU hidden size: 2/3 of 4 x width, rounded up to `multiple_of`."""
  hidden = int(2 * 4 * width / 3)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def mergear_defaults() -> ml_collections.ConfigDict:
  """MergeAR-L for the G+R tokenizer (L=256 = 16x16 codes, K=144) with every key."""
  c = ml_collections.ConfigDict()
  c.stage = STAGE
  c.seed = 0
  c.platform = "cpu"
  c.dtype = "float32"          # compute dtype; parameters stay float32

  m = c.model = ml_collections.ConfigDict()
  m.variant = "L"
  m.width = 1024
  m.num_layers = 24
  m.num_heads = 16
  m.ffn_dim = llama_ffn_dim(1024)  # 2816 (LlamaGen's nominal "4x" SwiGLU)
  m.norm_eps = 1e-5
  m.rope_base = 10000.0
  m.grid = (16, 16)            # code grid (rows, cols): L = rows * cols, raster order
  m.code_bits = 18             # LFQ bits: vocabulary 2^18
  # Factorised vocabulary: sub-codes from the most significant bits down (Open-MAGVIT2's
  # asymmetric 2^6 + 2^12). Input = sum of sub-code embeddings; output = one head per
  # sub-code, predicted in order, head k conditioned on the sub-codes before it.
  m.sub_code_bits = (6, 12)
  m.num_classes = 1000         # class ids 0..num_classes-1; num_classes is the null class
  m.keep_values = (121, 144, 169, 196, 225, 256)  # merge instructions M_K the model knows
  m.attention = "merge"        # 'merge': mask(codes, W, K_cap=L) in training; 'causal'
  m.window = 16                # W: recent positions every query sees
  m.remat = False              # jax.checkpoint each layer (scan body) in training
  m.init_std = 0.02

  d = c.data = ml_collections.ConfigDict()
  d.codes_dir = ""             # output of `python -m mergevq_jax.tokenize`

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 1024
  t.steps = 375_000            # 300 epochs of ImageNet at batch 1024
  t.lr = 4e-4
  t.b1 = 0.9
  t.b2 = 0.95
  t.weight_decay = 0.05
  t.schedule = "constant"      # 'constant' or 'cosine' (both after linear warmup)
  t.warmup_steps = 0
  t.class_dropout = 0.1        # labels replaced by the null class (classifier-free guidance)
  t.grad_clip = 1.0
  t.ema_decay = 0.0            # 0 switches the EMA off
  t.nan_patience = 10
  t.log_every = 100
  t.sample_every = 5000        # image grid of samples (needs the tokenizer of the codes)
  t.ckpt_every = 5000
  t.keep_ckpts = 3

  s = c.sample = ml_collections.ConfigDict()   # samples drawn during training
  s.num_classes_shown = 8
  s.cfg_scale = 1.0            # MergeAR is evaluated without guidance in the paper
  s.temperature = 1.0
  s.top_k = 0                  # 0: off
  s.top_p = 1.0
  s.keep_cap = 0               # K_cap of the cache; 0: K of the merge instruction

  sh = c.sharding = ml_collections.ConfigDict()
  sh.mesh_shape = (-1, 1, 1)
  sh.rules = DEFAULT_RULES
  return c


def validate_mergear_config(config) -> None:
  """ValueError naming the first problem; None if the config is usable."""
  validate_common(config, mergear_defaults(), SCHEMA)
  check_at_least(config, 0, ("train.sample_every", "train.warmup_steps"))
  check_hparams(config)
  t = config.train
  if t.schedule not in ("constant", "cosine"):
    raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {t.schedule!r}")
  if not 0 <= t.class_dropout < 1:
    raise ValueError(f"train.class_dropout must be in [0, 1), got {t.class_dropout}")
