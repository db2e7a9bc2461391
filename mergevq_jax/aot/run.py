"""What `python -m mergevq_jax.aot` does, callable: compile a config's functions for a
topology (optionally at the largest per-chip batch that fits) and return the rows."""
from __future__ import annotations

import sys
import time

COLUMNS = ("function", "chips", "per_chip_batch", "args_gib", "out_gib", "temp_gib",
           "total_gib", "hbm_gib", "fits", "model_tflop", "xla_tflop", "gbytes",
           "estimate_s", "estimate_from", "roofline_s", "images_per_s", "images_per_s_at_most",
           "tokens_per_s",
           "mfu", "step_bytes_vs_must_read", "vs_hbm_bound", "compile_s")


def markdown_table(rows: list[dict], cols) -> str:
  cols = [c for c in cols if any(c in r for r in rows)]
  cells = [[str(r.get(c, "")) for c in cols] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
  line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
  return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                   [line(row) for row in cells])


def for_tpu(config):
  """The config compiled for TPU: platform 'tpu' (it selects the ops' implementations);
  dtype, mesh and everything else as given."""
  if config.platform != "tpu":
    print(f"note: config.platform={config.platform!r}; compiling with platform 'tpu' (the "
          f"'tpu' preset would also set dtype=bfloat16 and mesh (1, -1, 1): "
          f"--config=FILE:tpu)", file=sys.stderr)
    config.platform = "tpu"
  return config


def run(config, topology_name: str, per_chip_batch: int = 0, find_max: bool = False,
        keeps: tuple[int, ...] = (), frozen_nets: bool = True, decode_batches=(),
        decode_weights_dtype: str = "", functions=("train", "decode"), search_start: int = 1,
        guidance=(False, True), known_rows=(), on_row=None) -> dict:
  """Compile and analyse; returns {'settings', 'rows', 'max_batch_rows'}. decode_batches:
  per-chip decoding batches (default: the training per-chip batch). known_rows, on_row:
  continue an interrupted batch search, save each of its rows (report.find_max_batch)."""
  from mergevq_jax import sharding
  from mergevq_jax.aot import chips, report, targets as tg
  from mergevq_jax.config import validate
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/tokenizer_gr.py:tpu")
  config = for_tpu(config)
  validate(config)
  topology = chips.parse_topology(topology_name)
  unknown = set(functions) - {"train", "decode"}
  if unknown:
    raise ValueError(f"--functions: unknown {sorted(unknown)}; choose from train, decode")
  devices = chips.topology_devices(topology)
  mesh = sharding.make_mesh(tuple(config.sharding.mesh_shape), devices)
  n = topology.num_chips
  tokenizer = config.stage == "tokenizer"
  if tokenizer:
    candidates = sorted(set(config.model.keep_candidates)) or [config.model.num_keep]
    keeps = tuple(keeps) or tuple(candidates)
    bad = [k for k in keeps if not 1 <= k <= config.model.image_size ** 2]
    if bad:
      raise ValueError(f"--num_keep: {bad} are not token counts")
  batch = per_chip_batch or max(1, config.train.batch_size // n)
  if batch < 1:
    raise ValueError(f"--per_chip_batch must be positive, got {batch}")

  def train_targets(b: int, ks=None):
    if tokenizer:
      return tg.tokenizer_targets(config, mesh, b, ks or keeps, frozen_nets)
    return [tg.mergear_train_target(config, mesh, b)]

  search_rows = []
  if find_max and "train" in functions:
    print(f"{topology.slice_name}: searching the largest per-chip batch that fits "
          f"({topology.chip.hbm_gib} GiB HBM per chip)", flush=True)
    largest = (max(keeps),) if tokenizer else None
    batch, search_rows = report.find_max_batch(lambda b: train_targets(b, largest)[0],
                                               topology, start=search_start,
                                               known=known_rows, on_row=on_row)
    if not batch:
      print(f"not even per-chip batch {search_start} fits on {topology.slice_name}", flush=True)
  # the search compiled the largest K at the batch found: that row is not compiled again
  rows = [r for r in search_rows if r["per_chip_batch"] == batch]
  done = {r["function"] for r in rows}
  todo = ([t for t in train_targets(batch) if t.name not in done]
          if "train" in functions and batch else [])
  if not tokenizer and "decode" in functions:
    for b in decode_batches or (batch or 1,):
      todo += tg.mergear_decode_targets(config, devices, b, guidance=guidance,
                                        weights_dtype=decode_weights_dtype)
  for target in todo:
    t0 = time.time()
    b = target.global_batch // n
    print(f"compiling {target.name} for {topology.name} ({n} chips), per-chip batch {b} ...",
          flush=True)
    rows.append(report.analyse(target, topology, b))
    print(f"  done in {time.time() - t0:.0f} s: {rows[-1].get('total_gib')} GiB per chip",
          flush=True)
  settings = {"config_stage": config.stage, "variant": config.model.variant,
              "platform": config.platform, "dtype": config.dtype,
              "mesh_shape": dict(mesh.shape), "topology": topology.name,
              "slice": topology.slice_name, "chip": topology.chip._asdict(),
              "frozen_nets": frozen_nets if tokenizer else None,
              "decode_weights_dtype": decode_weights_dtype or None}
  return {"settings": settings, "rows": rows, "max_batch_rows": search_rows}


