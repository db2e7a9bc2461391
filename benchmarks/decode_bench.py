"""MergeAR decoding benchmark: pruned vs full KV cache, jitted scan vs per-step Python loop.

  python benchmarks/decode_bench.py                          # 128 x 4 layers, batch 1,8,64
  python benchmarks/decode_bench.py --variants pruned,full --batches 64
  python benchmarks/decode_bench.py --config=configs/mergear_l.py   # e.g. on a GPU
  python benchmarks/decode_bench.py --json out.json
  python benchmarks/decode_bench.py --grid 32 --keep 256 --batches 64   # the G geometry

Variants, all sampling L=256 codes (16x16; --grid 32: L=1024, the G tokenizer's 32x32)
with merge instruction K=144 (--keep; G: 256), the same weights
(seed 0; the weight checksum is checked across cases) and the same sampling (T=1, top-k
off, top-p 1, no guidance):
  * pruned  `make_generate_fn` (one jitted lax.scan), cache 'merge': P + K_cap + W slots;
  * full    the same with cache 'causal' (LlamaGen's full cache): P + L slots;
  * loop    a Python loop: prefill jitted once, then per position one jitted step (sample
            the code from the hidden state, feed it; the cache donated), pruned layout.
Each (variant, batch) runs in its own process; seconds is the median of --repeats decodes
after one warm-up decode (compile_s = warm-up minus median). The output heads are
zero-initialised (LlamaGen's init), so the codes are uniform draws; that changes nothing
in the cost, which does not depend on the codes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_utils import header, load_config, print_table, run_case, timed  # noqa: E402

VARIANTS = ("pruned", "full", "loop")
# The "model where attention is a real share of the cost" on this CPU: at batch 64
# the KV reads are about two thirds of a pruned step (at 256 x 8 the SwiGLU and head
# matmuls take most of it; `--width 256 --layers 8` runs that one).
DEFAULT_MODEL = {"width": 128, "layers": 4, "heads": 4}
TARGET_PRUNED, TARGET_SCAN = 1.3, 3.0   # pruned/full at batch 64; scan/loop at batch 1
TARGET_PRUNED_G = 2.5   # pruned/full at batch 64 at L=1024 (attention follows K, not L)


def build_config(a):
  """MergeAR config: --config file (name[:platform] under configs/) or the defaults, with
  --width/--layers/--heads on top; L = grid x grid, sub-codes (6, 12), 1000 classes, and K = --keep
  added to the merge instructions if the config lacks it."""
  import jax
  from mergevq_jax.config.mergear import llama_ffn_dim, mergear_defaults

  path, _, platform = (a.config or "").partition(":")
  if a.config:
    cfg = load_config(os.path.splitext(os.path.basename(path))[0], platform or None)
  else:
    cfg = mergear_defaults()
    cfg.model.update(variant="bench", width=DEFAULT_MODEL["width"],
                     num_layers=DEFAULT_MODEL["layers"], num_heads=DEFAULT_MODEL["heads"])
  m = cfg.model
  if a.width:
    m.width = a.width
  if a.width or not a.config:
    m.ffn_dim = llama_ffn_dim(m.width)
  if a.layers:
    m.num_layers = a.layers
  if a.heads:
    m.num_heads = a.heads
  m.grid, m.sub_code_bits, m.num_classes, m.window = (a.grid, a.grid), (6, 12), 1000, a.window
  if a.keep not in m.keep_values:
    m.keep_values = tuple(sorted({*m.keep_values, a.keep}))
  if a.dtype != "auto":
    cfg.dtype = a.dtype
  elif not platform:  # a :platform suffix keeps its preset's dtype
    cfg.dtype = "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
  return cfg


def make_loop_fns(graphdef, layout):
  """The body of `generate`'s scan as its own jit, plus prefill and the last pick."""
  import functools

  import jax
  from flax import nnx
  from mergevq_jax.models.ar import decode as md

  @jax.jit
  def start(state, class_ids, keep_index):
    model = nnx.merge(graphdef, state)
    layers = md.decoder_layers(model)
    h, cache = md.prefill(model, layers, layout, class_ids, keep_index)
    return layers, h, cache

  @functools.partial(jax.jit, donate_argnums=(2,))
  def step(state, layers, cache, h, key, position, params):
    model = nnx.merge(graphdef, state)
    key, sub = jax.random.split(key)
    code = md._pick_code(model, h, sub, params, False)
    h, cache = md.feed_code(model, layers, layout, cache, code, position)
    return cache, h, key, code

  @jax.jit
  def last(state, h, key, params):
    return md._pick_code(nnx.merge(graphdef, state), h, key, params, False)

  return start, step, last


def case_decode(variant: str, batch: int, a) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from mergevq_jax.models.ar import kv_cache
  from mergevq_jax.models.ar import decode as md
  from mergevq_jax.models.ar.kv_cache import CacheLayout
  from mergevq_jax.models.ar.mergear import PREFIX, MergeAR
  from mergevq_jax.models.ar.sampling import SamplingParams

  cfg = build_config(a)
  m = cfg.model
  model = MergeAR(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  leaves = jax.tree.leaves(state)
  checksum = float(sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves))
  L = model.num_positions
  mode = "causal" if variant == "full" else "merge"
  layout = CacheLayout.make(PREFIX, L, mode, a.keep, a.window)
  params = SamplingParams.make(temperature=1.0, top_k=0, top_p=1.0)
  key = jax.random.key(1)
  class_ids = jnp.arange(batch, dtype=jnp.int32) % m.num_classes
  keep_index = jnp.full((batch,), model.keep_index(a.keep), jnp.int32)

  if variant == "loop":
    start, step, last = make_loop_fns(graphdef, layout)
    positions = [jax.device_put(np.int32(i)) for i in range(L - 1)]

    def run():
      layers, h, cache = start(state, class_ids, keep_index)
      k, codes = key, []
      for position in positions:
        cache, h, k, code = step(state, layers, cache, h, k, position, params)
        codes.append(code)
      codes.append(last(state, h, k, params))
      return jnp.stack(codes, axis=1)
  else:
    fn = md.make_generate_fn(graphdef, layout, guidance=False)
    run = lambda: fn(state, key, class_ids, keep_index, params)[0]

  first, median = timed(run, a.repeats)
  codes = np.asarray(run())
  itemsize = jnp.dtype(model.dtype).itemsize
  return {"variant": variant, "batch": batch, "length": L, "cache_slots": layout.num_slots,
          "kv_cache_mb": round(kv_cache.cache_bytes(layout, batch, m.num_layers, m.width,
                                                    itemsize) / 2 ** 20, 1),
          "seconds": round(median, 5), "images_per_s": round(batch / median, 2),
          "tokens_per_s": round(batch * L / median, 1), "compile_s": round(first - median, 1),
          "params_m": round(sum(x.size for x in leaves) / 1e6, 2), "weights_checksum": checksum,
          "codes_digest": hashlib.sha1(codes.astype(np.int32).tobytes()).hexdigest()[:12]}


def add_speedups(rows: list[dict]) -> None:
  """pruned_vs_full and scan_vs_loop (seconds ratios at the same batch) on the pruned rows."""
  by = {(r["variant"], r["batch"]): r for r in rows if "error" not in r}
  for (variant, batch), r in by.items():
    if variant != "pruned":
      continue
    for other, col in (("full", "pruned_vs_full"), ("loop", "scan_vs_loop")):
      if (other, batch) in by:
        r[col] = round(by[(other, batch)]["seconds"] / r["seconds"], 2)


def target_line(rows: list[dict]) -> str:
  parts = []
  target_pruned = TARGET_PRUNED_G if rows and rows[0].get("length", 0) >= 1024 else TARGET_PRUNED
  for col, want, target in (("pruned_vs_full", 64, target_pruned),
                            ("scan_vs_loop", 1, TARGET_SCAN)):
    got = {r["batch"]: r[col] for r in rows if col in r}
    if not got:
      parts.append(f"{col} n/a")
      continue
    batch = min(got, key=lambda b: abs(b - want))
    note = "" if batch == want else f", at batch {batch} not {want}"
    parts.append(f"{col} {got[batch]}x ({'met' if got[batch] >= target else 'NOT met'}{note})")
  return (f"target: pruned >= {target_pruned}x full (batch 64); scan >= {TARGET_SCAN}x loop "
          f"at batch 1 -> " + "; ".join(parts))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default=",".join(VARIANTS), help="subset of pruned,full,loop")
  p.add_argument("--batches", default="1,8,64")
  p.add_argument("--repeats", type=int, default=3, help="timed decodes after one warm-up")
  p.add_argument("--config", default=None,
                 help="configs/NAME.py[:platform]: that get_config() instead of the default "
                      f"model ({DEFAULT_MODEL}); --width/--layers/--heads still override")
  p.add_argument("--width", type=int, default=None)
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--heads", type=int, default=None)
  p.add_argument("--grid", type=int, default=16, help="code grid side: 16 (G+R, L=256) or "
                 "32 (G, L=1024)")
  p.add_argument("--keep", type=int, default=144, help="merge instruction K = K_cap (G: 256)")
  p.add_argument("--window", type=int, default=16, help="W, the ring of recent positions")
  p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                 help="compute dtype; auto: the :platform preset's, else float32 on CPU "
                      "and bfloat16 on GPU/TPU")
  p.add_argument("--json", default=None, help="also write the results here")
  p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
  a = p.parse_args()

  if a.case:  # child process: one (variant, batch), one JSON line
    print(json.dumps(case_decode(a.case[0], int(a.case[1]), a)))
    return

  variants = a.variants.split(",")
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    p.error(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
  batches = [int(b) for b in a.batches.split(",")]
  common = ["--repeats", str(a.repeats), "--grid", str(a.grid), "--keep", str(a.keep),
            "--window", str(a.window),
            "--dtype", a.dtype]
  for flag in ("config", "width", "layers", "heads"):
    if getattr(a, flag):
      common += [f"--{flag}", str(getattr(a, flag))]

  cfg = build_config(a)
  m = cfg.model
  print(header() + f" | {cfg.dtype}")
  print(f"# MergeAR width {m.width}, {m.num_layers} layers, {m.num_heads} heads "
        f"(head dim {m.width // m.num_heads}), ffn {m.ffn_dim}, L={m.grid[0] * m.grid[1]} "
        f"({m.grid[0]}x{m.grid[1]}), K=K_cap={a.keep}, W={a.window}, sub-codes "
        f"{tuple(m.sub_code_bits)}, {m.num_classes} classes; sampling T=1, top_k=0, "
        f"top_p=1, no guidance; median of {a.repeats} after 1 warm-up")
  rows = [run_case(__file__, [v, str(b), *common]) for b in batches for v in variants]
  add_speedups(rows)
  print_table("MergeAR decode (seconds per batch of images; speedups on the pruned rows)", rows,
              ["variant", "batch", "cache_slots", "kv_cache_mb", "seconds", "images_per_s",
               "tokens_per_s", "compile_s", "pruned_vs_full", "scan_vs_loop"])
  ok = [r for r in rows if "error" not in r]
  if ok:
    same = len({r["weights_checksum"] for r in ok}) == 1
    print(f"\nweights: {ok[0]['params_m']}M params, checksum {ok[0]['weights_checksum']:.6g} "
          f"({'identical in every case' if same else 'DIFFERENT across cases'})")
    digests = {(r["variant"], r["batch"]): r["codes_digest"] for r in ok}
    pairs = [(b, digests[("pruned", b)] == digests[("loop", b)]) for b in batches
             if ("pruned", b) in digests and ("loop", b) in digests]
    if pairs:
      print("loop codes == scan codes (same key): " +
            ", ".join(f"batch {b} {'yes' if same else 'NO'}" for b, same in pairs))
  print(target_line(rows))
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"model": m.to_dict(), "keep": a.keep, "window": a.window, "rows": rows}, f,
                indent=1, default=str)


if __name__ == "__main__":
  main()
