"""The tokenizer config (stage 'tokenizer'): the schema every configs/tokenizer_*.py starts
from, the K-candidate helpers, and validation.

A config file does `config = tokenizer_defaults(); config.model.ch = ...; return config`.
`validate_config` rejects keys that are not in the schema (typos) and values that cannot
work, with a ValueError naming the key, before anything is traced or compiled; the
model's own hyperparameter checks are `mergevq_jax.models.tokenizer.check_hparams`.
"""
from __future__ import annotations

import math

import ml_collections

from mergevq_jax.config.common import check_at_least, validate_common
from mergevq_jax.models.tokenizer import check_hparams
from mergevq_jax.sharding import DEFAULT_RULES

STAGE = "tokenizer"
SCHEMA = "mergevq_jax/config/tokenizer.py:tokenizer_defaults"   # named in error messages



def keep_candidates(num_keep: int, count: int) -> tuple[int, ...]:
  """Reference candidate set around K: (sqrt(K) + i)^2 for i = -1 .. count - 2."""
  root = round(math.sqrt(num_keep))
  return tuple((root + i) ** 2 for i in range(-1, count - 1))


def keep_probs(count: int, std: float = 0.5, floor: float = 0.05) -> tuple[float, ...]:
  """Reference 'gaussian' sampling probabilities for `keep_candidates` (mode at index 1):
  exp(-(i - 1)^2 / (2 std^2)) + floor, normalised. count=6 -> 0.118, 0.668, 0.118, 0.032..."""
  w = [math.exp(-((i - 1) ** 2) / (2 * std ** 2)) + floor for i in range(count)]
  return tuple(x / sum(w) for x in w)


def tokenizer_defaults() -> ml_collections.ConfigDict:
  """The G+R tokenizer (ImageNet 256x256, K=144) with every key the code reads."""
  c = ml_collections.ConfigDict()
  c.stage = STAGE
  c.seed = 0
  c.platform = "cpu"
  c.dtype = "float32"          # compute dtype: float32 or bfloat16 (parameters stay float32)

  m = c.model = ml_collections.ConfigDict()
  m.variant = "G+R"
  m.image_size = 256
  m.encoder_type = "cnn"       # 'cnn' (G, G+R) or 'vit' (R)
  m.ch = 64
  m.ch_mult = (1, 1, 2, 4, 8)
  m.num_res_blocks = 4         # per encoder level; decoder adds num_res_extra above level 0
  m.num_res_extra = 1
  m.patch_size = 16            # 'vit' only
  m.width = 768                # 'vit' only: encoder width (cnn width is ch * ch_mult[-1])
  m.num_layers = 12
  m.num_heads = 8
  m.decoder_num_heads = 8
  m.init_values = 1e-5         # LayerScale
  m.z_channels = 18            # LFQ bits
  m.num_keep = 144
  m.keep_candidates = keep_candidates(144, 6)   # 121, 144, 169, 196, 225, 256
  m.keep_probs = keep_probs(6)
  m.proportional_attention = True
  m.attention_impl = ""        # '' lets JAX choose; 'xla' or 'cudnn'
  m.align_head = "layer3"      # 'layer3' (G+R, R), 'layer2_ln' (G), or '' for none
  m.align_hidden = 2048
  m.align_dim = 768            # DINOv2 ViT-B/14 [CLS] width
  m.align_merge = "same_r"     # merging on the 224 px view: the r list of K ('same_r', the
                               # authors') or the ratio K/L ('same_ratio'); models/hparams.py

  r = m.recovery = ml_collections.ConfigDict()
  r.enabled = True
  r.width = 384
  r.num_heads = 8
  r.mlp_dim = 1536
  r.num_cross_layers = 2
  r.num_self_layers = 2

  q = c.quantizer = ml_collections.ConfigDict()
  q.tau = 0.01
  q.entropy_mode = "exact"     # 'exact' (half-split matmul) or 'bit_groups'
  q.group_size = 9             # bit_groups only
  q.per_token_weight = 1.0
  q.batch_weight = 1.0
  q.commit_weight = 0.25
  q.entropy_weight = 0.1

  d = c.data = ml_collections.ConfigDict()
  d.source = "samples"         # 'samples' (offline photos in installed packages), 'folder', 'tfds'
  d.path = ""                  # folder: root with class sub-folders; tfds: data_dir
  d.tfds_name = "imagenet2012"
  d.split = "train"
  d.crop_scale = (0.8, 1.0)    # main view: random-resized-crop area fraction, then flip
  d.align_views = False        # also yield 'weak' and 'strong' views for the alignment loss
  d.align_size = 224
  d.strong_scale = (0.08, 1.0)
  d.num_workers = 0            # grain worker processes (0: in the main process)
  d.eval_images = 8            # held-out images for PSNR / reconstructions

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 256           # global batch (split over the data-parallel devices)
  t.steps = 1_000_000
  t.lr = 1e-4
  t.b1 = 0.5
  t.b2 = 0.9
  t.lr_drops = (0.85, 0.95)    # lr x0.1 at these fractions of training
  t.ema_decay = 0.999
  t.grad_clip = 0.0            # global-norm clip; 0 disables (R uses 5.0)
  t.accum_steps = 1            # gradient accumulation: batch_size / accum_steps per micro-step
  t.nan_patience = 10          # stop after this many non-finite steps in a row
  t.log_every = 50
  t.eval_every = 1000          # PSNR, codebook usage and reconstructions.png
  t.ckpt_every = 5000
  t.keep_ckpts = 3

  # Held-out evaluation at the end of training and every eval.every steps, on the EMA
  # weights: rFID / PSNR / SSIM / LPIPS per K over the first num_images eval views, logged
  # as eval/heldout_* and in summary.json; the networks are loaded once. 0 turns it off.
  e = c.eval = ml_collections.ConfigDict()
  e.num_images = 0
  e.every = 0                  # steps between held-out evaluations (0: only at the end)
  e.inception = "auto"         # FID Inception weights ('auto': the eval extra's; '': no rFID)
  e.lpips = "auto"             # LPIPS weights ('auto': the eval extra's; '': no LPIPS)
  e.batch_size = 8             # images per device per batch

  lo = c.loss = ml_collections.ConfigDict()
  lo.pixel = "l1"              # 'l1' (reference code) or 'l2' (paper)
  lo.pixel_weight = 1.0
  lo.lpips_weight = 1.0        # 0.7 in the paper
  lo.lpips_path = ""           # converted LPIPS-VGG16 weights; '' turns LPIPS off
  lo.gan_weight = 0.1
  lo.disc_start = 0            # step at which the adversarial losses switch on
  lo.lecam_weight = 0.01
  lo.lecam_decay = 0.999
  lo.align_weight = 1.0        # 0.1 for G
  lo.teacher_path = ""         # DINOv2 ViT-B/14 weights; '' turns the alignment loss off
  lo.recovery_weight = 0.5     # source-recovery BCE (1.0 for R)

  di = c.disc = ml_collections.ConfigDict()
  di.enabled = True
  di.base_channels = 64
  di.num_layers = 3

  s = c.sharding = ml_collections.ConfigDict()
  s.mesh_shape = (-1, 1, 1)    # (data, fsdp, tensor); -1 takes the remaining devices
  s.rules = DEFAULT_RULES

  # Optional follow-up in the same job (the demo): tokenize the training images with the
  # trained tokenizer into <workdir>/codes and train this MergeAR config on them in
  # <workdir>/mergear (samples.png is copied to <workdir>).
  s2 = c.stage2 = ml_collections.ConfigDict()
  s2.mergear_config = ""       # path of a configs/mergear_*.py file; '' = tokenizer only
  s2.views = 1                 # tokenized views per image (center crop, then random crops)
  s2.steps = 0                 # overrides the MergeAR config's train.steps when > 0
  s2.gfid_samples = 0          # then gFID of this many samples against the eval views of
                               # the training images (eval.inception's weights); 0: off
  return c


def validate_config(config) -> None:
  """ValueError naming the first problem; returns None if the config is usable."""
  validate_common(config, tokenizer_defaults(), SCHEMA)
  check_at_least(config, 1, ("train.accum_steps", "train.eval_every", "data.eval_images",
                             "stage2.views"))
  check_at_least(config, 0, ("data.num_workers", "loss.disc_start", "stage2.steps",
                             "stage2.gfid_samples", "eval.num_images"))
  check_hparams(config)
  m = config.model
  if len(m.keep_probs) != len(m.keep_candidates):
    raise ValueError("model.keep_probs must have one entry per model.keep_candidates")
  if m.keep_probs and not math.isclose(sum(m.keep_probs), 1.0, abs_tol=1e-3):
    raise ValueError(f"model.keep_probs must sum to 1, got {sum(m.keep_probs)}")
