"""Sharded forward on 8 fake CPU devices equals the single-device forward."""
import json
import subprocess
import sys

import jax
import pytest

from mergevq_jax import sharding

from conftest import ROOT


@pytest.fixture(scope="module")
def sharded_results():
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py")],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", ["2x4x1", "2x2x2"])
def test_sharded_forward_equals_single_device(sharded_results, mesh):
  r = sharded_results[mesh]
  assert r["init_max_diff"] < 1e-6        # sharded init == single-device init
  assert r["image_max_diff"] < 1e-3       # reconstructions in [-1, 1]-ish range
  assert r["owner_equal"] and r["indices_equal"]
  assert r["output_spec"][0] != "None"    # the batch stays split across devices


def test_large_parameters_are_sharded(sharded_results):
  assert sharded_results["2x4x1"]["fc1_spec"] == ["fsdp", "None"]
  assert sharded_results["2x4x1"]["fc1_shard_shape"] == [64 // 4, 256]
  assert sharded_results["2x2x2"]["fc1_spec"] == ["fsdp", "tensor"]
  assert sharded_results["2x2x2"]["fc1_shard_shape"] == [32, 128]
  assert sharded_results["2x2x2"]["qkv_spec"] == ["fsdp", "None", "tensor", "None"]


def test_fsdp_divides_the_train_state_across_devices(sharded_results):
  """Parameters + optimizer state per device fall to about 1/N of replicated with fsdp=N
  (the few small or indivisible tensors stay replicated); pure data parallel (8x1x1)
  replicates everything, or the ratios to it could not reach 1/N."""
  b = sharded_results["state_bytes"]
  for mesh, n in (("2x4x1", 4), ("1x8x1", 8)):
    for part in ("params", "opt_state", "total"):
      ratio = b[mesh][part] / b["8x1x1"][part]
      assert 1 / n <= ratio < 1.25 / n, (mesh, part, ratio)


def test_indivisible_dims_replicate(sharded_results):
  # conv_in -> fsdp, but 3 RGB channels do not split 2 ways; conv_out (32) does.
  assert sharded_results["2x2x2"]["stem_spec"] == ["None", "None", "None", "tensor"]


def test_mesh_and_batch_errors():
  with pytest.raises(ValueError, match="needs 8 devices"):
    sharding.make_mesh((2, 2, 2))
  with pytest.raises(ValueError, match="3 entries"):
    sharding.make_mesh((1, 1))
  mesh = sharding.make_mesh((-1, 1, 1))
  assert mesh.shape["data"] == jax.device_count()
