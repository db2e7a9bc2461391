"""Compile for a TPU slice from any machine and print per-chip memory and time estimates.

  python -m mergevq_jax.aot --config=configs/tokenizer_gr.py:tpu --topology=v5p:4x4x4
  python -m mergevq_jax.aot --config=configs/tokenizer_gr.py:tpu --topology=v5p-128 \
      --find_max_batch --num_keep=256 --json=gr.json
  python -m mergevq_jax.aot --config=configs/mergear_l.py:tpu --topology=v5e-16 \
      --per_chip_batch=16 --decode_batch=16

Compiles what the trainers and the sampler run (`aot.targets`) on the config's mesh over
the topology's chips, and prints one row per function (`aot.report`): per-chip HBM
(arguments / outputs / temporaries / total against the chip's), whether it fits, model
and XLA FLOPs and bytes per chip, the step-time estimate and where it comes from, images/s
(tokens/s for decoding) and MFU. These are compiler estimates, not measurements. Needs
libtpu (`pip install "jax[tpu]==<jax version>"`), no TPU: JAX runs on the CPU here
(JAX_PLATFORMS=cpu), so it can also run on a TPU host beside a job that holds the chips.
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mergevq_jax import cli, files  # noqa: E402
from mergevq_jax.aot.run import COLUMNS, markdown_table, run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Tokenizer or MergeAR config file, e.g. configs/tokenizer_gr.py:tpu.",
    lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology: v5p:4x4x4, v5e:4x4, "
                                "or a slice name such as v5p-128 or v5e-16.")
_BATCH = flags.DEFINE_integer("per_chip_batch", 0, "Per-chip training batch; 0: "
                              "config train.batch_size / chips (at least 1).")
_FIND = flags.DEFINE_bool("find_max_batch", False, "Search the largest per-chip training "
                          "batch that fits in 97%% of HBM (a line through compiled points, "
                          "to within 12.5%%), at the largest K; then compile every function "
                          "at that batch.")
_KEEPS = flags.DEFINE_string("num_keep", "", "Tokenizer: comma-separated K values to "
                             "compile; '' = every model.keep_candidates value.")
_FROZEN = flags.DEFINE_bool("frozen_nets", True, "Tokenizer: include the frozen LPIPS-VGG16 "
                            "and DINOv2 teacher in the step, as the paper trains (weights "
                            "abstract); --nofrozen_nets: only those the config's files give.")
_DECODE_BATCH = flags.DEFINE_list("decode_batch", [], "MergeAR: per-chip decoding batches "
                                  "(comma-separated); default: the training per-chip batch.")
_DECODE_DTYPE = flags.DEFINE_string("decode_weights_dtype", "", "MergeAR: decode from a copy "
                                    "of the weights in this dtype (e.g. bfloat16); '' = as "
                                    "trained (float32).")
_WHAT = flags.DEFINE_list("functions", ["train", "decode"], "Which functions: train, decode.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows (and the settings) here.")


def main(argv):
  del argv
  if not _TOPOLOGY.value:
    raise ValueError("--topology is required, e.g. --topology=v5p:2x2x1 or v5p-128")
  keeps = tuple(int(k) for k in _KEEPS.value.split(",") if k.strip())
  out = run(_CONFIG.value, _TOPOLOGY.value, _BATCH.value, _FIND.value, keeps, _FROZEN.value,
            tuple(int(b) for b in _DECODE_BATCH.value), _DECODE_DTYPE.value, tuple(_WHAT.value))
  s = out["settings"]
  print(f"\n{s['variant']} ({s['config_stage']}, {s['dtype']}) on {s['slice']} "
        f"({s['topology']}), mesh {s['mesh_shape']}: compiler estimates, not measurements")
  print(markdown_table(out["rows"], COLUMNS))
  print("estimate_from: 'xla' = XLA's optimal_seconds (loop-free programs); 'roofline' = "
        "max(model FLOPs / peak, bytes / HBM bandwidth), '(lower bound)' when the program "
        "loops (XLA counts a loop body once); decode: L x one position (2- minus 1-position "
        "programs). Per chip and per call (a decode call generates whole images).")
  if _JSON.value:
    files.write_json(_JSON.value, out)


if __name__ == "__main__":
  cli.run(main)
