"""Default tokenizer config (the schema every config file starts from) and its validation.

A config file does `config = tokenizer_defaults(); config.model.ch = ...; return config`.
`validate_config` rejects keys that are not in the schema (typos) and values that cannot
work, with a ValueError naming the key, before anything is traced or compiled.
"""
from __future__ import annotations

import math
import os

import ml_collections

from mergevq_jax.models import tome
from mergevq_jax.sharding import DEFAULT_RULES

# What each platform preset sets: compute dtype, attention implementation, mesh.
PLATFORM_PRESETS = {
    "cpu": dict(dtype="float32", attention_impl="xla", mesh_shape=(-1, 1, 1)),
    "gpu": dict(dtype="bfloat16", attention_impl="cudnn", mesh_shape=(-1, 1, 1)),
    "tpu": dict(dtype="bfloat16", attention_impl="xla", mesh_shape=(1, -1, 1)),
}
PLATFORMS = tuple(PLATFORM_PRESETS)


def apply_platform(config: ml_collections.ConfigDict, platform: str | None
                   ) -> ml_collections.ConfigDict:
  """Set the platform preset (`--config=configs/x.py:gpu`); None or '' keeps the config.
  Configs without model.attention_impl (MergeAR) take the dtype and mesh only."""
  if not platform:
    return config
  if platform not in PLATFORM_PRESETS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  preset = PLATFORM_PRESETS[platform]
  config.platform = platform
  config.dtype = preset["dtype"]
  if "attention_impl" in config.model:
    config.model.attention_impl = preset["attention_impl"]
  config.sharding.mesh_shape = preset["mesh_shape"]
  return config


def load_config_file(path: str, platform: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(platform)` of a config file given by path (configs/*.py)."""
  import importlib.util
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} not found")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(platform)


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
  return c


def _diff_keys(cfg, ref, prefix="") -> list[str]:
  unknown = []
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in ref:
      unknown.append(path)
    elif isinstance(cfg[key], ml_collections.ConfigDict):
      if isinstance(ref[key], ml_collections.ConfigDict):
        unknown += _diff_keys(cfg[key], ref[key], path + ".")
  return unknown


def downsample_factor(m) -> int:
  return 2 ** (len(m.ch_mult) - 1) if m.encoder_type == "cnn" else m.patch_size


def encoder_width(m) -> int:
  return m.ch * m.ch_mult[-1] if m.encoder_type == "cnn" else m.width


def num_tokens(m, image_size: int | None = None) -> int:
  side = (image_size or m.image_size) // downsample_factor(m)
  return side * side


def validate_common(config, defaults: ml_collections.ConfigDict, schema: str) -> None:
  """Checks every config kind shares: no key outside `defaults` (named by `schema`, e.g.
  'mergevq_jax/config_base.py:tokenizer_defaults'), platform, dtype, mesh shape."""
  unknown = _diff_keys(config, defaults)
  if unknown:
    raise ValueError(f"config key(s) {unknown} do not exist; see {schema} for the schema")
  if config.platform not in PLATFORMS:
    raise ValueError(f"config.platform must be one of {PLATFORMS}, got {config.platform!r}")
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
  if len(config.sharding.mesh_shape) != 3:
    raise ValueError(f"sharding.mesh_shape needs 3 entries (data, fsdp, tensor), "
                     f"got {config.sharding.mesh_shape}")


def validate_config(config) -> None:
  """ValueError naming the first problem; returns None if the config is usable."""
  validate_common(config, tokenizer_defaults(),
                  "mergevq_jax/config_base.py:tokenizer_defaults")
  m = config.model
  if m.encoder_type not in ("cnn", "vit"):
    raise ValueError(f"model.encoder_type must be 'cnn' or 'vit', got {m.encoder_type!r}")
  f = downsample_factor(m)
  if m.image_size % f:
    raise ValueError(f"model.image_size={m.image_size} is not divisible by the downsampling "
                     f"factor {f}")
  for key, width, heads in (("num_heads", encoder_width(m), m.num_heads),
                            ("decoder_num_heads", m.ch * m.ch_mult[-1], m.decoder_num_heads)):
    if width % heads:
      raise ValueError(f"model.{key}={heads} does not divide the width {width}")
  bad = [w for w in [m.ch * k for k in m.ch_mult] + [encoder_width(m)] if w % 32]
  if bad:
    raise ValueError(f"channel widths {bad} (model.ch * ch_mult, encoder width) are not "
                     f"divisible by the 32 GroupNorm groups")
  L = num_tokens(m)
  for k in (m.num_keep,) + tuple(m.keep_candidates):
    try:
      tome.merge_schedule(m.num_layers, L, int(k))
    except ValueError as e:
      raise ValueError(f"model.num_keep / keep_candidates: {e}") from None
  if len(m.keep_probs) != len(m.keep_candidates):
    raise ValueError("model.keep_probs must have one entry per model.keep_candidates")
  if m.keep_probs and not math.isclose(sum(m.keep_probs), 1.0, abs_tol=1e-3):
    raise ValueError(f"model.keep_probs must sum to 1, got {sum(m.keep_probs)}")
  if m.align_head not in ("", "layer3", "layer2_ln"):
    raise ValueError(f"model.align_head must be '', 'layer3' or 'layer2_ln', got {m.align_head!r}")
  if config.quantizer.entropy_mode not in ("exact", "bit_groups"):
    raise ValueError(f"quantizer.entropy_mode must be 'exact' or 'bit_groups', "
                     f"got {config.quantizer.entropy_mode!r}")
