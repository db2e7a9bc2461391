"""Tokenize a dataset with a trained tokenizer into an on-disk code dataset (stage 2 input).

  python -m mergevq_jax.tokenize --tokenizer_workdir=RUN --out=CODES \
      [--keep_values=121,144,169] [--views=1] [--batch_size=64] \
      [--source=folder --path=/data/imagenet --split=train] [--overwrite]

See `mergevq_jax.data.tokenize_images` for what is written; the output directory is a
`mergevq_jax.data.codes` dataset for `python -m mergevq_jax.main --config=configs/mergear_*.py`.
"""
from __future__ import annotations


from absl import flags

from mergevq_jax import cli, files, run_dir
from mergevq_jax.data import sources
from mergevq_jax.data.tokenize_images import default_keep_values, tokenize_dataset

_WORKDIR = flags.DEFINE_string("tokenizer_workdir", None, "Stage-1 run directory.")
_OUT = flags.DEFINE_string("out", None, "Output codes directory.")
_KEEP = flags.DEFINE_list("keep_values", [], "Merge instructions K (default: the tokenizer's "
                          "keep_candidates, or num_keep).")
_VIEWS = flags.DEFINE_integer("views", 1, "Views per image: the center crop, then random crops.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per encoder call.")
_SOURCE = flags.DEFINE_string("source", "", "Data source (default: the tokenizer's).")
_PATH = flags.DEFINE_string("path", None, "data.path override.")
_SPLIT = flags.DEFINE_string("split", None, "data.split override.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random crops.")
_RAW = flags.DEFINE_bool("raw_weights", False, "Use the raw weights instead of the EMA.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the codes dataset in --out.")


def check_out(out: str, overwrite: bool) -> None:
  """Before any work: --out is not a run directory, holds no codes dataset (unless
  `overwrite`), and can be created."""
  if (files.path(out) / run_dir.CONFIG_FILE).is_file():
    raise ValueError(f"--out={out} is a run directory; give the codes their own directory "
                     f"(e.g. {files.join(out, 'codes')})")
  if (files.path(out) / "manifest.json").is_file() and not overwrite:
    raise ValueError(f"--out={out} already holds a codes dataset; pass --overwrite to "
                     f"replace it")
  cli.output_dir(out)


def main(argv):
  del argv
  if not _WORKDIR.value or not _OUT.value:
    raise ValueError("--tokenizer_workdir=RUN and --out=DIR are required")
  check_out(_OUT.value, _OVERWRITE.value)
  from mergevq_jax import pretrained
  tokenizer, config, step = pretrained.load_tokenizer(_WORKDIR.value, use_ema=not _RAW.value)
  sources.override_data(config, _SOURCE.value, _PATH.value, _SPLIT.value)
  source = sources.source_from_config(config)
  keep = tuple(int(k) for k in _KEEP.value) or default_keep_values(config)
  manifest = tokenize_dataset(
      tokenizer, source, _OUT.value, keep, views=_VIEWS.value, batch_size=_BATCH.value,
      seed=_SEED.value, extra_manifest={"tokenizer_workdir": files.join(_WORKDIR.value),
                                        "tokenizer_step": step})
  print(manifest)


if __name__ == "__main__":
  cli.run(main)
