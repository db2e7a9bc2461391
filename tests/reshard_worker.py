"""Run by test_checkpoint.py in a subprocess with 8 fake CPU devices; prints one JSON line.

A checkpoint written on one mesh restores onto another and training continues there:
the tiny MergeAR train state trains one step on mesh 2x4 (data x fsdp, 8 devices) and is
saved; it is restored on 4x1 (4 devices) and on 1 device, and each of the three trains one
more step on the same batch. argv[1]: the checkpoint folder (the test restores it again in
its own 1-device process); argv[2]: an .npz the worker writes with the saved parameters.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from conftest import load_config  # noqa: E402
from mergevq_jax import sharding  # noqa: E402
from mergevq_jax.checkpoint import MERGEAR_LAYOUT, Checkpointer  # noqa: E402
from mergevq_jax.train import ar_state, ar_step  # noqa: E402

RULES = sharding.DEFAULT_RULES


def config():
  c = load_config("mergear_tiny")
  c.train.batch_size = 8
  return c


def batch(cfg, seed):
  rng = np.random.default_rng(seed)
  n, m = cfg.train.batch_size, cfg.model
  positions = m.grid[0] * m.grid[1]
  return {"codes": rng.integers(0, 2 ** m.code_bits, (n, positions)).astype(np.int32),
          "keep": np.asarray(m.keep_values, np.int32)[rng.integers(0, len(m.keep_values), n)],
          "label": rng.integers(0, m.num_classes, n).astype(np.int32)}


def one_step(cfg, state, shardings, mesh, host_batch):
  batch_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch",), None, RULES, mesh))
  fn = ar_step.jit_train_step(ar_step.make_train_step(cfg, ar_state.graphdef(cfg)), shardings,
                              batch_sharding, mesh)
  with sharding.use_mesh(mesh, RULES):
    data = {k: jax.device_put(v, batch_sharding) for k, v in host_batch.items()}
    state, metrics = fn(state, data)
  return state, float(metrics["loss"])


def flat(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(tree)}


def max_diff(a: dict, b: dict) -> float:
  return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def main():
  assert jax.device_count() == 8, jax.devices()
  ckpt_dir, params_npz = sys.argv[1], sys.argv[2]
  cfg = config()
  mesh = sharding.make_mesh((2, 4, 1))
  state, shardings = ar_state.create_state(cfg, mesh, RULES)
  state, _ = one_step(cfg, state, shardings, mesh, batch(cfg, 0))
  saved = flat(state)
  ckpt = Checkpointer(ckpt_dir, keep=1, layout=MERGEAR_LAYOUT)
  ckpt.save(1, state, {"note": "2x4"})
  ckpt.close()
  abstract = ar_state.abstract_state(cfg)
  results, params = {}, {}
  for name, shape, devices in [("2x4", (2, 4, 1), 8), ("4x1", (4, 1, 1), 4), ("1", (1, 1, 1), 1)]:
    mesh = sharding.make_mesh(shape, jax.devices()[:devices])
    target = sharding.state_shardings(abstract, mesh, RULES)
    ckpt = Checkpointer(ckpt_dir, keep=1, layout=MERGEAR_LAYOUT)
    restored, meta = ckpt.restore(abstract, target)
    ckpt.close()
    on = {d.id for x in jax.tree.leaves(restored) for d in x.sharding.device_set}
    restored_diff = max_diff(flat(restored), saved)
    state, loss = one_step(cfg, restored, target, mesh, batch(cfg, 1))
    params[name] = flat(state.params)
    results[name] = {"restored_max_diff": restored_diff, "devices": len(on),
                     "step": int(state.step), "loss": loss, "meta_step": meta["step"]}
  for name in ("4x1", "1"):
    results[name]["params_max_diff_vs_2x4"] = max_diff(params[name], params["2x4"])
  np.savez(params_npz, **{k: v for k, v in saved.items() if k.startswith(".params")})
  print(json.dumps(results))


if __name__ == "__main__":
  main()
