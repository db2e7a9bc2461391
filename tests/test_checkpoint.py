"""Checkpoints: weights are items of their own (restored alone, no optimizer state built),
the whole state round-trips, and a checkpoint of another layout is a clear error."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mergevq_jax import checkpoint, run_dir, sharding


class State(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any
  ema: Any


def make_state(ema=True) -> State:
  p = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,))}
  return State(step=jnp.int32(7), params=p, opt_state={"mu": jax.tree.map(jnp.zeros_like, p)},
               ema=jax.tree.map(lambda x: x + 0.5, p) if ema else {})


def shardings_of(tree):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  return sharding.state_shardings(jax.eval_shape(lambda: tree), mesh, sharding.DEFAULT_RULES)


@pytest.mark.parametrize("ema", [True, False])
def test_state_and_weights_round_trip(tmp_path, ema):
  state = make_state(ema)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(7, state, meta={"note": 1})
  ckpt.wait()
  abstract = jax.eval_shape(lambda: state)
  restored, meta = ckpt.restore(abstract, shardings_of(state))
  assert meta["step"] == 7 and meta["note"] == 1 and meta["layout"] == checkpoint.TOKENIZER_LAYOUT
  assert isinstance(restored, State)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  field = "ema" if ema else "params"
  weights, _ = ckpt.restore_weights(field, jax.eval_shape(lambda: state.params),
                                    shardings_of(state.params))
  for a, b in zip(jax.tree.leaves(getattr(state, field)), jax.tree.leaves(weights), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt.close()
  items = {p.name for p in (tmp_path / "checkpoints" / "7").iterdir()}
  assert {"params", "train", "meta"} <= items and ("ema" in items) == ema


def test_checkpoint_of_the_old_layout_is_a_clear_error(tmp_path):
  """A v1 checkpoint (the whole state as one 'state' item) names both layout tags."""
  state = make_state()
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({"layout": "mergevq_jax.stage1.v1", "step": 3})))
  manager.wait_until_finished()
  manager.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
  match = r"layout 'mergevq_jax.stage1.v1'.*'mergevq_jax.tokenizer.v2'"
  with pytest.raises(ValueError, match=match):
    ckpt.restore(jax.eval_shape(lambda: state), shardings_of(state))
  with pytest.raises(ValueError, match=match):
    ckpt.restore_weights("ema", jax.eval_shape(lambda: state.ema), shardings_of(state.ema))
  ckpt.close()
  mergear = checkpoint.Checkpointer(str(tmp_path), keep=1, layout=checkpoint.MERGEAR_LAYOUT)
  with pytest.raises(ValueError, match="'mergevq_jax.mergear.v2'"):
    mergear.restore(jax.eval_shape(lambda: state), shardings_of(state))
  mergear.close()


def test_config_round_trips_with_tuples(tmp_path):
  from conftest import load_config
  cfg = load_config("tokenizer_tiny")
  run_dir.save_config(str(tmp_path), cfg)
  back = run_dir.load_config(str(tmp_path))
  assert back.model.ch_mult == cfg.model.ch_mult and back.stage == "tokenizer"
  with pytest.raises(ValueError, match="not a mergevq_jax run directory"):
    run_dir.load_config(str(tmp_path / "nowhere"))


def test_a_checkpoint_restores_onto_another_mesh_and_training_continues(tmp_path):
  """Saved on mesh 2x4 (8 fake devices): restored on 2x4, 4x1 (4 devices) and 1 device
  in that process, and on 1 device in this one, with equal arrays; one more training step
  on each mesh gives the same parameters (the batch split differs, so sums differ in the
  last bits)."""
  import json
  import subprocess
  import sys

  from conftest import ROOT, load_config
  from mergevq_jax.train import ar_state
  ckpt_dir, npz = tmp_path / "run", tmp_path / "saved.npz"
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "reshard_worker.py"),
                        str(ckpt_dir), str(npz)], capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  assert [results[m]["devices"] for m in ("2x4", "4x1", "1")] == [8, 4, 1]
  for mesh, r in results.items():
    assert r["restored_max_diff"] == 0.0, (mesh, r)
    assert r["meta_step"] == 1 and r["step"] == 2, (mesh, r)
    np.testing.assert_allclose(r["loss"], results["2x4"]["loss"], rtol=1e-5)
  for mesh in ("4x1", "1"):
    assert results[mesh]["params_max_diff_vs_2x4"] < 1e-5, results[mesh]
  # This process (1 device, another process than the one that saved) restores it too.
  cfg = load_config("mergear_tiny")
  abstract = ar_state.abstract_state(cfg)
  ckpt = checkpoint.Checkpointer(str(ckpt_dir), keep=1, layout=checkpoint.MERGEAR_LAYOUT)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state, meta = ckpt.restore(abstract, sharding.state_shardings(abstract, mesh,
                                                                sharding.DEFAULT_RULES))
  ckpt.close()
  saved = np.load(npz)
  flat = {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
  assert meta == {"layout": checkpoint.MERGEAR_LAYOUT, "step": 1, "note": "2x4"}
  assert len(saved.files) == len(flat)
  for key in saved.files:
    np.testing.assert_array_equal(flat[key[len(".params"):]], saved[key])
