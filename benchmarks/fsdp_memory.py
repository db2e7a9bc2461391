"""Per-device bytes of the train states (parameters, EMA, optimizer states, discriminator)
on meshes of 1, 2, 4 and 8 devices, replicated (data parallel) and FSDP: the buffers the
trainer allocates, computed from the abstract state and the sharding rules (no memory is
used, so the real G+R and MergeAR-L sizes print on any machine).

  python benchmarks/fsdp_memory.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench_utils import load_config, print_table  # noqa: E402
from mergevq_jax import sharding  # noqa: E402

CONFIGS = (("tokenizer_gr", "G+R tokenizer (stage 1)"), ("mergear_l", "MergeAR-L (stage 2)"))


def abstract_state(name: str, config):
  if config.stage == "mergear":
    from mergevq_jax.train.ar_state import abstract_state as make
  else:
    from mergevq_jax.train.tokenizer_state import abstract_state as make
  return make(config)


def bytes_per_device(abstract, mesh) -> dict:
  """Bytes on the most loaded device, per top-level field of the train state."""
  shardings = sharding.state_shardings(abstract, mesh, sharding.rules_from_config(CONFIG))
  out = {}
  for field in abstract._fields:
    leaves = zip(jax.tree.leaves(getattr(abstract, field)),
                 jax.tree.leaves(getattr(shardings, field)))
    out[field] = sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize for a, s in leaves)
  return out


def main():
  global CONFIG
  parser = argparse.ArgumentParser()
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = []
  for name, title in CONFIGS:
    CONFIG = load_config(name, None)
    abstract = abstract_state(name, CONFIG)
    for n in (1, 2, 4, 8):
      for kind, shape in (("replicated", (n, 1, 1)), ("fsdp", (1, n, 1))):
        if n == 1 and kind == "fsdp":
          continue
        mesh = sharding.make_mesh(shape, jax.devices()[:n])
        b = bytes_per_device(abstract, mesh)
        total = sum(b.values())
        weights = b["params"] + b.get("ema", 0)
        rows.append({"model": title, "devices": n, "mesh": kind,
                     "params+ema GiB": round(weights / 2 ** 30, 3),
                     "optimizer GiB": round(b["opt_state"] / 2 ** 30, 3),
                     "total GiB": round(total / 2 ** 30, 3)})
  for r in rows:
    base = next(x for x in rows if x["model"] == r["model"] and x["devices"] == 1)
    r["vs 1 device"] = f"{r['total GiB'] / base['total GiB']:.3f}"
  print_table("Train state per device (float32 buffers; activations not included)", rows,
              ["model", "devices", "mesh", "params+ema GiB", "optimizer GiB", "total GiB",
               "vs 1 device"])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
