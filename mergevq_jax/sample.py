"""Sample images from a trained MergeAR + tokenizer: codes -> tokenizer decoder -> a grid.

  python -m mergevq_jax.sample --ar_workdir=AR --tokenizer_workdir=TOK \
      --classes=207,360,387 --cfg=4.0 --per_class=4 --out=grid.png

The grid has one column per class and `per_class` rows; a JSON beside it (or
--stats_json) lists per sample the class, K, kept cache slots used, codes that overflowed
into the ring, and distinct codes. The generated L codes go to the decoder directly (the
expanded sequence needs no source matrix). --tokenizer_workdir defaults to the one
recorded in the codes dataset the MergeAR run trained on.
"""
from __future__ import annotations

import json
import os
import time

import jax
from absl import flags

from mergevq_jax import cli, files
from mergevq_jax.generation import (check_pair, code_decoder, default_num_keep, sample_images,
                                    tokenizer_workdir_of)

_AR = flags.DEFINE_string("ar_workdir", None, "MergeAR run directory.")
_TOK = flags.DEFINE_string("tokenizer_workdir", None, "Tokenizer run directory.")
_CLASSES = flags.DEFINE_list("classes", ["0", "1", "2", "3"], "Class ids, one column each.")
_PER_CLASS = flags.DEFINE_integer("per_class", 4, "Samples per class (grid rows).")
_KEEP = flags.DEFINE_integer("num_keep", 0, "Merge instruction K (default: the tokenizer's).")
_CFG = flags.DEFINE_float("cfg", 1.0, "Classifier-free guidance scale (1: no guidance).")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Softmax temperature (0: greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k per sub-code head (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass per sub-code head (1: off).")
_CAP = flags.DEFINE_integer("keep_cap", 0, "K_cap of the pruned cache (0: K).")
_CACHE = flags.DEFINE_enum("cache", "", ["", "merge", "causal"],
                           "KV cache (default: as trained; 'causal' = full cache).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", "samples.png", "Output image grid (PNG).")
_STATS = flags.DEFINE_string("stats_json", "", "Per-sample stats (default: <out>.json).")


def main(argv):
  del argv
  from mergevq_jax import pretrained
  from mergevq_jax.models.ar.decode import Generator
  from mergevq_jax.images import image_grid, save_png, to_uint8
  if not _AR.value:
    raise ValueError("--ar_workdir is required")
  if _PER_CLASS.value < 1:
    raise ValueError(f"--per_class must be >= 1, got {_PER_CLASS.value}")
  try:
    classes = [int(c) for c in _CLASSES.value]
  except ValueError:
    raise ValueError(f"--classes must be comma-separated class ids, got "
                     f"{','.join(_CLASSES.value)!r}") from None
  if not classes:
    raise ValueError("--classes must name at least one class id")
  out = cli.output_file(_OUT.value, "--out", (".png",))
  stats_path = cli.output_file(_STATS.value or os.path.splitext(out)[0] + ".json",
                               "--stats_json", (".json",))
  model, ar_config, ar_step = pretrained.load_mergear(_AR.value)
  tokenizer, tok_config, tok_step = pretrained.load_tokenizer(
      _TOK.value or tokenizer_workdir_of(ar_config))
  check_pair(ar_config, tokenizer)
  num_keep = _KEEP.value or default_num_keep(model, tok_config)
  generator = Generator(model, mode=_CACHE.value or None)
  t0 = time.time()
  images, codes, stats = sample_images(
      generator, code_decoder(tokenizer), jax.random.key(_SEED.value), classes, num_keep,
      _PER_CLASS.value, keep_cap=_CAP.value, temperature=_TEMP.value, top_k=_TOP_K.value,
      top_p=_TOP_P.value, cfg_scale=_CFG.value)
  seconds = time.time() - t0
  rows = [to_uint8(row) for row in images]
  save_png(out, image_grid(rows))
  per_sample = [{"class": classes[j], "row": i, "num_keep": num_keep,
                 **{k: int(v[i, j]) for k, v in stats.items()}}
                for i in range(images.shape[0]) for j in range(len(classes))]
  report = {"out": files.join(out), "ar_workdir": _AR.value, "ar_step": ar_step,
            "tokenizer_step": tok_step, "num_keep": num_keep, "cfg": _CFG.value,
            "temperature": _TEMP.value, "top_k": _TOP_K.value, "top_p": _TOP_P.value,
            "cache": generator.mode, "keep_cap": _CAP.value or num_keep,
            "window": generator.window, "seconds": round(seconds, 2), "samples": per_sample}
  files.write_json(stats_path, report)
  print(json.dumps({k: v for k, v in report.items() if k != "samples"}))


if __name__ == "__main__":
  cli.run(main)
