"""Linear probe command (the library: `mergevq_jax.eval.linear_probe`).

  python -m mergevq_jax.eval.probe --workdir=RUN --source=folder --path=/data/in1k
      [--train_split=train --test_split=val] [--num_train=0 --num_test=0] [--epochs=90]
  python -m mergevq_jax.eval.probe --workdir=RUN --source=digits      (offline sets:
      scikit-learn's 8x8 digits, 10 classes; scikit-image's lfw_subset, faces / non-faces;
      a fixed stratified 70/30 split)

Writes <out>/probe.json with train / test accuracy of the [CLS] and the mean-pooled
features (see linear_probe for the features and the classifier).
"""
from __future__ import annotations

import json

import numpy as np
from absl import flags

from mergevq_jax import cli, files
from mergevq_jax.eval.linear_probe import (OFFLINE_SETS, ProbeConfig, extract_features,
                                           fit_linear_probe, offline_set, stratified_split)

_WORKDIR = flags.DEFINE_string("workdir", None, "Tokenizer run directory.")
_SOURCE = flags.DEFINE_string("source", "digits", f"folder, tfds, or an offline set "
                              f"{OFFLINE_SETS}.")
_PATH = flags.DEFINE_string("path", "", "Folder root / tfds data_dir.")
_TFDS = flags.DEFINE_string("tfds_name", "imagenet2012", "tfds dataset name.")
_TRAIN = flags.DEFINE_string("train_split", "train", "Training split (folder / tfds).")
_TEST = flags.DEFINE_string("test_split", "val", "Test split (folder / tfds).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 0, "Training images (0: all).")
_NUM_TEST = flags.DEFINE_integer("num_test", 0, "Test images (0: all).")
_EPOCHS = flags.DEFINE_integer("epochs", 90, "Probe training epochs.")
_LR = flags.DEFINE_float("lr", 1e-3, "Peak AdamW learning rate (cosine decay).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per feature-extraction batch.")
_RAW = flags.DEFINE_bool("raw_weights", False, "Use the raw weights instead of the EMA.")
_OUT = flags.DEFINE_string("out", "", "Output directory (default: <workdir>/eval).")


def _first(n: int, limit: int) -> np.ndarray:
  return np.arange(n if limit <= 0 else min(n, limit))


def main(argv):
  del argv
  from mergevq_jax import pretrained
  from mergevq_jax.data import sources
  if not _WORKDIR.value:
    raise ValueError("--workdir=<tokenizer run> is required")
  out_dir = cli.output_dir(_OUT.value or files.join(_WORKDIR.value, "eval"))
  tokenizer, config, step = pretrained.load_tokenizer(_WORKDIR.value, use_ema=not _RAW.value)
  if _SOURCE.value in OFFLINE_SETS:
    src = offline_set(_SOURCE.value)
    tr, te = stratified_split(src.labels)
    train_src = test_src = src
    tr, te = tr[_first(len(tr), _NUM_TRAIN.value)], te[_first(len(te), _NUM_TEST.value)]
  elif _SOURCE.value in ("folder", "tfds"):
    d = config.data
    d.source, d.path, d.tfds_name = _SOURCE.value, _PATH.value, _TFDS.value
    d.split = _TRAIN.value
    train_src = sources.source_from_config(config, train=True)
    d.split = _TEST.value
    test_src = sources.source_from_config(config, train=True)
    tr, te = _first(len(train_src), _NUM_TRAIN.value), _first(len(test_src), _NUM_TEST.value)
  else:
    raise ValueError(f"--source must be folder, tfds or one of {OFFLINE_SETS}, got "
                     f"{_SOURCE.value!r}")
  f_train, y_train = extract_features(tokenizer, train_src, tr, _BATCH.value)
  f_test, y_test = extract_features(tokenizer, test_src, te, _BATCH.value)
  cfg = ProbeConfig(epochs=_EPOCHS.value, lr=_LR.value)
  report = {"workdir": files.join(_WORKDIR.value), "step": step, "source": _SOURCE.value,
            "features": {name: fit_linear_probe(f_train[name], y_train, f_test[name], y_test,
                                                cfg=cfg)
                         for name in ("cls", "mean")}}
  files.write_json(files.join(out_dir, "probe.json"), report)
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  cli.run(main)
