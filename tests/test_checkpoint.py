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
