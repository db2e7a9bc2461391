"""Ahead-of-time compilation for TPU topologies on this CPU host (`mergevq_jax.aot`):
topology names, the programs the trainers and the sampler run compiled for v5e:2x2 and
v5p:2x2x1, what their memory and FLOP accounting must satisfy, and the command line.

Compiling needs libtpu (the test extra installs `jax[tpu]`); no TPU is used.
"""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from mergevq_jax import sharding
from mergevq_jax.aot import chips, report, targets as tg
from mergevq_jax.aot.flops import function_flops
from mergevq_jax.ops.conv import CPU_KERNEL_SCOPE

needs_libtpu = pytest.mark.skipif(chips.libtpu_missing_message() is not None,
                                  reason="libtpu not installed (pip install jax[tpu])")
GIB = 2 ** 30


def topology(name):
  t = chips.parse_topology(name)
  return t, chips.topology_devices(t)


# --- names and errors (no libtpu needed) -----------------------------------------------

@pytest.mark.parametrize("name, libtpu_name, num_chips, slice_name", [
    ("v5p:4x4x4", "v5p:4x4x4", 64, "v5p-128"),
    ("v5p-128", "v5p:4x4x4", 64, "v5p-128"),
    ("v5p-32", "v5p:2x2x4", 16, "v5p-32"),
    ("v5p-8", "v5p:2x2x1", 4, "v5p-8"),
    ("v5e-16", "v5e:4x4", 16, "v5e-16"),
    ("v5e-32", "v5e:4x8", 32, "v5e-32"),
    ("v6e-8", "v6e:2x4", 8, "v6e-8"),
    ("v4-8", "v4:2x2x1", 4, "v4-8"),
])
def test_topology_names(name, libtpu_name, num_chips, slice_name):
  t = chips.parse_topology(name)
  assert (t.name, t.num_chips, t.slice_name) == (libtpu_name, num_chips, slice_name)


@pytest.mark.parametrize("name, message", [
    ("v9:2x2", "unknown TPU topology 'v9:2x2' (chip 'v9'); accepted chips: v4, v5e, v5p, v6e"),
    ("tpu", "unknown TPU topology 'tpu'"),
    ("v5p:2x2", "a v5p shape has 3 dimensions"),
    ("v5p-7", "v5p slices count 2 TensorCores per chip"),
    ("v5e-12", "slices of a power-of-two number of chips only"),
])
def test_bad_topology_names(name, message):
  with pytest.raises(ValueError) as e:
    chips.parse_topology(name)
  assert message in str(e.value)
  if "unknown" in message:
    assert "v5p:4x4x4" in str(e.value) and "v5p-128" in str(e.value)


def test_missing_libtpu_names_the_pip_command(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "libtpu" else real(n, *a))
  with pytest.raises(ImportError, match=rf'pip install "jax\[tpu\]=={jax.__version__}"'):
    chips.topology_devices(chips.parse_topology("v5e:2x2"))


# --- FLOP counting ----------------------------------------------------------------------

def test_flops_count_scan_bodies_times_their_length():
  """XLA's cost analysis counts a loop body once; the jaxpr count multiplies it."""
  a, w = jnp.ones((8, 32)), jnp.ones((32, 32))
  one = function_flops(lambda a: jnp.tanh(a @ w), a)
  assert one == 2 * 8 * 32 * 32

  def scanned(a):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), a, None, length=12)[0]
  assert function_flops(scanned, a) == 12 * one
  x, k = jnp.ones((2, 16, 16, 3)), jnp.ones((3, 3, 3, 8))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert function_flops(conv, x, k) == 2 * 2 * 16 * 16 * 8 * (3 * 3 * 3)


# --- compiled programs ------------------------------------------------------------------

@needs_libtpu
def test_tiny_tokenizer_step_for_v5e():
  """The stage-1 step as the trainer builds it, compiled for v5e:2x2 (fsdp over 4 chips):
  it fits, its FLOPs agree with XLA's own count (a loop-free program), and none of the
  XLA:CPU kernels (banded kernel gradients, shifted-sum depthwise conv: the only loops a
  tokenizer step can have) is in it. The tiny tokenizer is cut to one ToMe block and one
  down-sampling level (16 px, 8x8 tokens): XLA:TPU's compile time follows the number of
  fusions (100 -> 29 s here), and every kind of layer is still there."""
  config = load_config("tokenizer_tiny", "tpu")
  m = config.model
  m.image_size, m.ch_mult, m.num_layers = 16, (1, 2), 1
  m.keep_candidates, m.keep_probs = (m.num_keep,), (1.0,)
  topo, devices = topology("v5e:2x2")
  mesh = sharding.make_mesh(tuple(config.sharding.mesh_shape), devices)
  target = tg.tokenizer_targets(config, mesh, 2, (config.model.num_keep,), frozen_nets=False)[0]
  compiled = report.compile_target(target)
  text = compiled[0].as_text()
  assert CPU_KERNEL_SCOPE not in text and "while(" not in text
  row = report.analyse(target, topo, 2, compiled)
  assert row["fits"] and 0 < row["total_gib"] < 1 and not row["loops"]
  assert row["estimate_from"] == ("xla" if row["xla_optimal_s"] > 0 else "roofline")
  # the jaxpr's matmul and conv FLOPs agree with XLA's count of the compiled program to
  # within what XLA rewrites (G+R: 0.765 vs 0.782 TFLOP per chip; tiny: 1.35x, XLA turns
  # some small matmuls into other ops)
  assert 0.6 < row["model_tflop"] / row["xla_tflop"] < 1.5, row


@needs_libtpu
def test_cpu_kernels_are_tagged():
  """The signature the test above looks for is really in a 'cpu'-platform program."""
  from mergevq_jax.ops import conv
  x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  loss = lambda x, k: jnp.sum(conv.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  assert CPU_KERNEL_SCOPE in jax.jit(jax.grad(loss, 1)).lower(x, k).compile().as_text()


@needs_libtpu
@pytest.mark.parametrize("name", ["v5e:2x2", "v5p:2x2x1"])
def test_tiny_mergear_step_and_decoders(name):
  """MergeAR's train step and its decoders compile for the topology; the pruned cache's
  program holds less than the full one's, guidance doubles the rows; the sharded
  parameter bytes per chip fall with fsdp (1/4 of the replicated ones, up to the small
  vectors that stay whole)."""
  config = load_config("mergear_tiny", "tpu")
  config.model.num_layers = 2   # the decoders unroll the layers: compile time follows them
  topo, devices = topology(name)
  rows = {}
  for mesh_shape in ((4, 1, 1), (1, 4, 1)):
    mesh = sharding.make_mesh(mesh_shape, devices)
    target = tg.mergear_train_target(config, mesh, 2)
    rows[mesh_shape] = report.analyse(target, topo, 2)
    # the compiled arguments are the shards the sharding rules give; TPU memory tiles
    # pad small arrays (a (4, 128) stack of norm scales takes an (8, 128) tile)
    expected = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(target.args))
    assert expected <= rows[mesh_shape]["argument_bytes"] < 1.5 * expected
    rows[mesh_shape]["expected"] = expected
  replicated, fsdp = rows[(4, 1, 1)], rows[(1, 4, 1)]
  assert replicated["fits"] and fsdp["fits"]
  assert 0.25 <= fsdp["expected"] / replicated["expected"] < 0.27
  assert fsdp["argument_bytes"] / replicated["argument_bytes"] < 0.4
  assert replicated["loops"] and replicated["model_tflop"] > replicated["xla_tflop"]
  if name != "v5e:2x2":
    return   # the decoders once
  targets = (tg.mergear_decode_targets(config, devices, 8, guidance=(False,)) +
             tg.mergear_decode_targets(config, devices, 8, caches=("merge",), guidance=(True,)))
  decode = {t.name: report.analyse(t, topo, 8) for t in targets}
  assert set(decode) == {"decode pruned", "decode full", "decode pruned cfg"}
  assert all(r["fits"] for r in decode.values())
  cache = {name: r["kv_cache_bytes"] for name, r in decode.items()}
  assert cache["decode pruned"] < cache["decode full"]
  assert cache["decode pruned cfg"] == 2 * cache["decode pruned"]
  assert decode["decode pruned"]["temp_gib"] <= decode["decode full"]["temp_gib"]
  for r in decode.values():   # an estimate is never below the time to read weights + cache
    assert r["vs_hbm_bound"] >= 1 and r["tokens_per_s"] > 0 and r["step_gbytes"] > 0


@needs_libtpu
def test_a_batch_that_does_not_fit_is_a_row_not_a_crash():
  config = load_config("mergear_tiny", "tpu")
  topo, devices = topology("v5e:2x2")
  mesh = sharding.make_mesh((1, 4, 1), devices)
  row = report.analyse(tg.mergear_train_target(config, mesh, 65536), topo, 65536)
  assert row["fits"] is False and row["total_gib"] > 16, row


@pytest.mark.parametrize("limit", [1, 5, 37, 64, 1000])
def test_find_max_batch_search(monkeypatch, limit):
  """Lines through the compiled points: the batch found fits, the smallest batch seen not
  to fit is within 12.5% above it, and it takes a handful of compiles."""
  seen = []

  def analyse(target, topology, b):   # memory affine in the batch, 16 GiB at `limit`
    seen.append(b)
    total = 2 + 13.5 * b / limit + (0.3 if b % 3 == 0 else 0.0)   # not exactly a line
    return {"per_chip_batch": b, "fits": b <= limit, "total_gib": total}
  monkeypatch.setattr(report, "analyse", analyse)
  best, rows = report.find_max_batch(lambda b: None, chips.parse_topology("v5e:2x2"),
                                     headroom=1.0)
  assert best <= limit and len(rows) == len(set(seen)) <= 6, seen
  assert best >= limit - max(1, limit // 8), seen   # within 12.5% of the true answer


def test_find_max_batch_continues_an_interrupted_search(monkeypatch):
  """Rows saved by on_row and passed back as `known` are not compiled again, and the
  continued search ends where an uninterrupted one does."""
  compiled, interrupted = [], []

  def analyse(target, topology, b):
    compiled.append(b)
    if len(compiled) == 3 and not interrupted:
      interrupted.append(b)
      raise KeyboardInterrupt   # the host is stopped during the third compile
    return {"per_chip_batch": b, "fits": b <= 45, "total_gib": 2 + 0.3 * b}
  monkeypatch.setattr(report, "analyse", analyse)
  topo, saved = chips.parse_topology("v5e:2x2"), []
  with pytest.raises(KeyboardInterrupt):
    report.find_max_batch(lambda b: None, topo, start=4, headroom=1.0, on_row=saved.append)
  assert [r["per_chip_batch"] for r in saved] == compiled[:2] == [4, 16]
  compiled.clear()
  best, rows = report.find_max_batch(lambda b: None, topo, start=4, headroom=1.0,
                                     known=saved)
  assert 4 not in compiled and 16 not in compiled and best == 45, compiled
  assert [r["per_chip_batch"] for r in rows][:2] == [4, 16]


@needs_libtpu
@pytest.mark.slow
def test_find_max_batch_brackets_the_hbm_limit():
  """On a v5e (16 GiB) the largest tiny-MergeAR batch found fits and twice it does not."""
  config = load_config("mergear_tiny", "tpu")
  topo, devices = topology("v5e:2x2")
  mesh = sharding.make_mesh((1, 4, 1), devices)
  make = lambda b: tg.mergear_train_target(config, mesh, b)
  best, rows = report.find_max_batch(make, topo, start=512, limit=1 << 16)
  by_batch = {r["per_chip_batch"]: r for r in rows}
  assert by_batch[best]["fits"] and best >= 1024
  assert all(r["fits"] == (b <= best) for b, r in by_batch.items())


@needs_libtpu
@pytest.mark.slow
def test_gr_step_at_per_chip_batch_1_fits_16_gib():
  """The real G+R step (with LPIPS and the DINOv2 teacher) at per-chip batch 1 on
  v5p:2x2x1 needs less than a v5e's 16 GiB."""
  config = load_config("tokenizer_gr", "tpu")
  topo, devices = topology("v5p:2x2x1")
  mesh = sharding.make_mesh(tuple(config.sharding.mesh_shape), devices)
  target = tg.tokenizer_targets(config, mesh, 1, (144,), frozen_nets=True)[0]
  row = report.analyse(target, topo, 1)
  assert row["fits"] and row["total_gib"] < 16, row


# --- command line -------------------------------------------------------------------------

def aot(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "mergevq_jax.aot", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@needs_libtpu
def test_command_line_table_and_json(tmp_path):
  out = tmp_path / "rows.json"
  r = aot("--config=configs/mergear_tiny.py:tpu", "--topology=v5e-4", "--per_chip_batch=2",
          "--functions=train", f"--json={out}")
  assert r.returncode == 0, r.stderr
  assert "compiler estimates, not measurements" in r.stdout
  assert "| train " in r.stdout and "estimate_from" in r.stdout
  result = json.loads(out.read_text())
  assert result["settings"]["slice"] == "v5e-4"
  (row,) = result["rows"]
  assert row["chips"] == 4 and row["global_batch"] == 8 and row["fits"]


@pytest.mark.parametrize("args, message", [
    (["--config=configs/mergear_tiny.py:tpu", "--topology=v7x:2x2"],
     "unknown TPU topology 'v7x:2x2'"),
    (["--config=configs/mergear_tiny.py:tpu", "--topology=v5e:2x2",
      "--config.sharding.mesh_shape=(2,4,1)"], "mesh shape (2, 4, 1) needs 8 devices, 4 present"),
    (["--config=configs/mergear_tiny.py:tpu"], "--topology is required"),
    (["--config=configs/mergear_tiny.py:tpu", "--topology=v5e:2x2", "--functions=eval"],
     "--functions: unknown ['eval']"),
])
def test_command_line_errors(args, message):
  if "mesh" in message and chips.libtpu_missing_message():
    pytest.skip("needs libtpu")
  r = aot(*args, timeout=120)
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert "Traceback" not in r.stderr
