"""Compile a `Target` for a TPU topology and read per-chip memory and cost: one table row.

Memory (bytes per chip, from the executable's `memory_analysis()`): arguments, outputs,
temporaries; total = arguments + outputs - donated (aliased) + temporaries + code, against
the chip's HBM. A program that does not fit fails to compile on TPU; its row says so with
the bytes the compiler reported instead of raising.

Time (per call, per chip), the estimate and where it comes from:
  * 'xla': XLA's `optimal_seconds`, used when positive and the program has no loop;
  * 'roofline': max(model FLOPs / bf16 peak, bytes / HBM bandwidth) with XLA's bytes, for
    a loop-free program whose `optimal_seconds` is not positive (invalid);
  * 'roofline (lower bound)': a program with loops. XLA's cost analysis counts a loop
    body once, whatever its trip count, so its bytes are replaced by every input read and
    every output written once: a bound on speed (`images_per_s_at_most`), no MFU;
  * decoding: L x one position, the difference of two loop-free programs of 2 and 1
    positions (`targets._position_step`), never below the HBM bound (the weights and this
    chip's KV cache read once per position).
Model FLOPs come from the jaxpr (`aot.flops`: loop bodies times their length) divided by
the chips. MFU = model FLOPs / (estimate x peak).
"""
from __future__ import annotations

import re
import time

from mergevq_jax import sharding
from mergevq_jax.aot.chips import Topology
from mergevq_jax.aot.targets import Target

GIB = 2 ** 30
_OOM = re.compile(r"(RESOURCE_EXHAUSTED|[Rr]an out of memory|exceed)", re.S)
# libtpu: "... required for HLO temporaries (309.64G) exceeds available HBM (15.75G)" or
# "Used 20.5G of 15.75G hbm".
_NEEDED = (re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM"),
           re.compile(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm"))
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def _has_loops(compiled) -> bool:
  return bool(re.search(r"\bwhile\(", compiled.as_text() or ""))


def out_of_memory_bytes(message: str) -> int | None:
  """The bytes per chip a program needed, from libtpu's out-of-memory message."""
  for pattern in _NEEDED:
    m = pattern.search(message)
    if m:
      return int(float(m.group(1)) * _UNITS[m.group(2)])
  return None


def compile_target(target: Target):
  """(compiled executable, seconds to lower and compile); raises what the compiler raises."""
  t0 = time.perf_counter()
  with sharding.use_mesh(target.mesh, target.rules):
    compiled = target.fn.lower(*target.args).compile()
  return compiled, time.perf_counter() - t0


def analyse(target: Target, topology: Topology, per_chip_batch: int, compiled=None) -> dict:
  """One row: compile `target` (unless `compiled`, (executable, seconds) of
  `compile_target`, is given) and estimate; a row with 'fits': False (and the error) when
  the compiler runs out of HBM."""
  chip, chips = topology.chip, topology.num_chips
  row = {"function": target.name, "topology": topology.name, "slice": topology.slice_name,
         "chips": chips, "per_chip_batch": per_chip_batch, "global_batch": target.global_batch}
  try:
    compiled, seconds = compiled or compile_target(target)
  except Exception as e:  # noqa: BLE001 -- out of HBM is an answer, anything else is raised
    message = str(e)
    if not _OOM.search(message):
      raise
    needed = out_of_memory_bytes(message)
    row.update(fits=False, total_gib=None if needed is None else round(needed / GIB, 2),
               hbm_gib=chip.hbm_gib, error=message.strip().splitlines()[0][:300])
    return row
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes +
           mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = _cost(compiled)
  model_flops = target.flops() / chips
  xla_flops = float(cost.get("flops", 0.0))
  optimal = float(cost.get("optimal_seconds", -1.0))
  loops = _has_loops(compiled)
  peak, bandwidth = chip.peak_tflops * 1e12, chip.hbm_tbps * 1e12
  if not loops:   # XLA's counts are the program's
    bytes_ = float(cost.get("bytes accessed", 0.0))
    source = "xla" if optimal > 0 else "roofline"
  else:           # a lower bound: every input read and every output written once
    bytes_ = float(mem.argument_size_in_bytes + mem.output_size_in_bytes)
    source = "roofline (lower bound)"
  roofline = max(model_flops / peak, bytes_ / bandwidth)
  estimate = optimal if source == "xla" else roofline
  row.update(
      compile_s=round(seconds, 1), argument_bytes=mem.argument_size_in_bytes,
      args_gib=round(mem.argument_size_in_bytes / GIB, 3),
      out_gib=round(mem.output_size_in_bytes / GIB, 3),
      alias_gib=round(mem.alias_size_in_bytes / GIB, 3),
      temp_gib=round(mem.temp_size_in_bytes / GIB, 3),
      total_gib=round(total / GIB, 3), hbm_gib=chip.hbm_gib, fits=total <= chip.hbm_bytes,
      model_tflop=round(model_flops / 1e12, 4), xla_tflop=round(xla_flops / 1e12, 4),
      gbytes=round(bytes_ / 1e9, 3), loops=loops, xla_optimal_s=round(optimal, 6),
      roofline_s=round(roofline, 6))
  if target.kind == "decode":
    estimate, source = _decode_estimate(target, topology, row, roofline)
  row.update(estimate_s=round(estimate, 6), estimate_from=source)
  if source == "roofline (lower bound)":   # an upper bound on speed, not an estimate
    row["images_per_s_at_most"] = round(target.global_batch / estimate, 2)
  else:
    row.update(mfu=round(model_flops / (estimate * peak), 3),
               images_per_s=round(target.global_batch / estimate, 2))
  return row


def _decode_estimate(target: Target, topology: Topology, row: dict, roofline: float
                     ) -> tuple[float, str]:
  """A decode call's time: L x one position, the difference between the loop-free
  programs of 2 and 1 positions (`targets._position_step`: XLA's bytes and time are their
  own), never below the HBM bound (weights + this chip's KV cache read once per position).
  Adds the per-position columns to `row`."""
  info, chips = target.info, topology.num_chips
  positions = info["positions"]
  must_read = info["weight_bytes"] + info["cache_bytes"] / chips
  bandwidth = topology.chip.hbm_tbps * 1e12
  one, two = (analyse(step, topology, row["per_chip_batch"]) for step in info["steps"])
  step_bytes = (two["gbytes"] - one["gbytes"]) * 1e9
  step_s = two["estimate_s"] - one["estimate_s"]
  bound = positions * must_read / bandwidth
  estimate = max(positions * step_s, bound, roofline)
  row.update(tokens_per_s=round(target.global_batch * positions / estimate, 1),
             kv_cache_bytes=int(info["cache_bytes"] // chips),
             kv_cache_gib=round(info["cache_bytes"] / chips / GIB, 3),
             weights_gib=round(info["weight_bytes"] / GIB, 3),
             step_gbytes=round(step_bytes / 1e9, 3),
             step_bytes_vs_must_read=round(step_bytes / must_read, 2),
             hbm_bound_s=round(bound, 6), vs_hbm_bound=round(estimate / bound, 2),
             step_compile_s=round(one["compile_s"] + two["compile_s"], 1))
  return estimate, f"L x position step ({two['estimate_from']})"


def find_max_batch(make_target, topology: Topology, start: int = 1, limit: int = 4096,
                   headroom: float = 0.97, known=(), on_row=None) -> tuple[int, list[dict]]:
  """The largest per-chip batch whose program fits in `headroom` x HBM, with few compiles
  (a G+R step takes minutes to compile). Per-chip memory is affine in the per-chip batch
  (state shards + activations), so: compile at `start` and 4 x start, predict the batch
  that fills the HBM from the line through them, compile it, and correct with the line
  through the newest points until the batch fits and the next step up would not (the
  prediction from a batch that fits says less than 12.5% more). make_target:
  per_chip_batch -> Target. known: rows of an interrupted search to continue from (they are
  not compiled again); on_row(row) is called after each compile, to save it. Returns (batch,
  every row compiled on the way); batch 0 when `start` does not fit."""
  rows: dict[int, dict] = {r["per_chip_batch"]: r for r in known}
  budget = headroom * topology.chip.hbm_gib

  def measure(b: int) -> dict:
    if b not in rows:
      rows[b] = analyse(make_target(b), topology, b)
      print(f"  per-chip batch {b}: {rows[b]['total_gib']} GiB of {topology.chip.hbm_gib} "
            f"({'fits' if rows[b]['fits'] else 'does not fit'})", flush=True)
      if on_row is not None:
        on_row(rows[b])
    return rows[b]

  fits = lambda b: measure(b)["fits"] and measure(b)["total_gib"] <= budget
  if not fits(start):
    return 0, list(rows.values())
  if len(rows) < 2:
    measure(min(4 * start, limit))
  for _ in range(8):
    good = max(b for b in rows if fits(b))
    bad = min((b for b in rows if b > good and not fits(b)), default=None)
    if good == limit or (bad is not None and bad - good <= max(1, good // 8)):
      break
    known = sorted((b, r["total_gib"]) for b, r in rows.items() if r.get("total_gib"))
    (b0, t0), (b1, t1) = known[-2], known[-1]
    slope = (t1 - t0) / (b1 - b0) if b1 != b0 and t1 > t0 else 0.0
    guess = int(b1 + (budget - t1) / slope) if slope else 2 * good
    if bad is None and slope and rows[b1]["fits"] and guess < good + max(1, good // 8):
      break   # the line through fitting points ends within 12.5% above `good`
    guess = min(guess, limit)
    if bad is not None:    # stay inside (good, bad), a quarter of it below bad at least
      guess = min(guess, bad - max(1, (bad - good) // 4))
    guess = max(guess, good + 1)
    if guess in rows:
      guess = (good + (bad if bad is not None else 2 * good)) // 2
    measure(min(guess, limit))
  good = max(b for b in rows if fits(b))
  return good, [rows[b] for b in sorted(rows)]
