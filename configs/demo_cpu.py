"""The main demo: a small G+R-shaped tokenizer (CNN + ToMe transformer + LFQ + decoder)
trained on the offline sample photographs, in a few minutes on 2 CPU cores.

  python -m mergevq_jax.main --config=configs/demo_cpu.py --workdir=/tmp/mergevq_demo

LPIPS and the DINOv2 teacher are off unless weight files are given
(--config.loss.lpips_path=..., --config.loss.teacher_path=... with
--config.data.align_views=True). The discriminator switches on after 60% of the steps.
After the tokenizer, a tiny MergeAR trains on the photos' codes and writes samples.png
(--config.stage2.mergear_config='' skips it).
"""
import os

from mergevq_jax.config import apply_platform, keep_candidates, keep_probs, load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(platform="cpu"):
  config = load_config_file(os.path.join(HERE, "tokenizer_tiny.py"))
  m = config.model
  m.variant = "demo"
  m.recovery.enabled = True
  m.keep_candidates = keep_candidates(36, 3)  # 25, 36, 49
  m.keep_probs = keep_probs(3)
  t = config.train              # batch 8, lr 1e-3 as tokenizer_tiny.py
  t.steps = 1000
  t.ema_decay = 0.99
  t.log_every = 20
  t.eval_every = 250
  t.ckpt_every = 500
  t.keep_ckpts = 2
  config.loss.lpips_path = ""
  config.loss.teacher_path = ""
  config.loss.disc_start = 600
  config.disc.base_channels = 32
  config.data.source = "samples"
  # Crops of 70-100% of the photo: the eval views are whole photos. With (0.3, 1.0) the
  # EMA PSNR after 500 steps (one K) was 17.91 dB, with (0.7, 1.0) 18.95 dB.
  config.data.crop_scale = (0.7, 1.0)
  # Then: tokenize the photos (center crop + 23 random crops each) and train a tiny MergeAR
  # on the codes, one class per photo; it writes samples.png.
  config.stage2.mergear_config = os.path.join(HERE, "mergear_tiny.py")
  config.stage2.views = 24
  # With the eval extra's weights installed: rFID / SSIM / LPIPS of the final tokenizer on
  # all 11 photos, and gFID of 64 MergeAR samples against the photos' centre crops (tiny N:
  # biased, for orientation only; summary.json says so).
  config.eval.num_images = 11
  config.eval.batch_size = 11
  config.stage2.gfid_samples = 64
  return apply_platform(config, platform)
