"""Export a run to PyTorch: safetensors + config.json (see `mergevq_jax.export.export_dir`).

  python -m mergevq_jax.export --workdir=RUN --out=DIR [--weights=ema|raw] \
      [--layout=native|authors]

--layout=native (default) writes the project's own parameter tree, loaded by
`mergevq_jax.export.torch_modules` (`MergeVQTokenizer.from_pretrained(DIR)`,
`MergeAR.from_pretrained(DIR)`: PyTorch only, no JAX). --layout=authors writes a tokenizer
under the key names of the authors' PyTorch `MergeVQModel` (ApexGen-X/MergeVQ) plus
authors_config.yaml, the model section of their configs/gpu_s1 format. --weights defaults
to the EMA where the run kept one. Import an export back into a run directory with
`python -m mergevq_jax.export.importer`.
"""
from __future__ import annotations

import os

from absl import flags

# Exporting reads a checkpoint onto the host; no accelerator is needed (and with libtpu
# installed on a machine without a TPU, probing for one prints a page of errors).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from mergevq_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (tokenizer or MergeAR).")
_OUT = flags.DEFINE_string("out", None, "Export directory (local; created if missing).")
_WEIGHTS = flags.DEFINE_enum("weights", "", ["", "ema", "raw"],
                             "ema (default where the run kept one) or raw parameters.")
_LAYOUT = flags.DEFINE_enum("layout", "native", ["native", "authors"],
                            "native: the project's parameter tree; authors: the authors' "
                            "PyTorch key names (tokenizer only).")
_SHARD = flags.DEFINE_float("max_shard_gb", 2.0, "Largest safetensors file (GB) before the "
                            "export is split into shards with an index.")


def main(argv):
  del argv
  from mergevq_jax.export.exporter import export_run
  if not _WORKDIR.value:
    raise ValueError("--workdir is required")
  out = _OUT.value
  if not out:
    raise ValueError("--out is required")
  if _SHARD.value <= 0:
    raise ValueError(f"--max_shard_gb must be positive, got {_SHARD.value}")
  result = export_run(_WORKDIR.value, out, _WEIGHTS.value, _LAYOUT.value,
                      int(_SHARD.value * 1e9))
  print(f"exported {result['stage']} step {result['step']} ({result['weights']} weights, "
        f"{result['layout']} layout, {result['num_parameters'] / 1e6:.2f}M parameters) "
        f"to {out} in {result['seconds']} s:")
  for name, size in result["files"].items():
    print(f"  {name:<40} {size / 1e6:10.2f} MB")
  print(f"load it in PyTorch: from mergevq_jax.export.torch_modules import "
        f"{result['torch_class']}; {result['torch_class']}.from_pretrained({out!r})")


if __name__ == "__main__":
  cli.run(main)
