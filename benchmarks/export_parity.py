"""Export a trained run to PyTorch and compare the PyTorch outputs with the JAX ones on real
photos: the check a user runs before trusting an export (the tests do the same on random
weights).

  python benchmarks/export_parity.py --workdir=/tmp/mergevq_demo --out=/tmp/mergevq_export

Exports the tokenizer run (native layout, and the authors' layout where the config has an
authors' counterpart) and, when `<workdir>/mergear` is a MergeAR run, MergeAR too. Then, in
fp32: the offline sample photos (center crops at the run's image size) reconstructed at
each K by JAX and by `MergeVQTokenizer.from_pretrained` (max abs difference, code indices
equal, ties at zero counted, owners equal, source-recovery argmax equal); MergeAR
teacher-forced logits on the run's own codes (the merge mask and the causal mask) and
greedy samples with the pruned and the full cache (codes and cache statistics equal).
Prints tables and the file sizes; writes benchmarks/results/export_parity.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "export_parity.json")
TIE = 1e-5   # |z| below this: the sign (the code bit) may differ by rounding alone


def _table(rows: list[dict]) -> str:
  cols = list(rows[0])
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def photos(size: int) -> np.ndarray:
  from mergevq_jax.data.augment import eval_view
  from mergevq_jax.data.sources import SampleImages
  src = SampleImages("eval")
  return np.stack([eval_view(src[i]["image"], size) for i in range(len(src))])


def tokenizer_parity(workdir: str, export: str, use_ema: bool = True) -> list[dict]:
  from flax import nnx
  from mergevq_jax import pretrained
  from mergevq_jax.export.torch_modules import MergeVQTokenizer
  from mergevq_jax.models.tokenizer import jit_method
  model, config, _ = pretrained.load_tokenizer(workdir, use_ema)
  torch_model = MergeVQTokenizer.from_pretrained(export)
  x = photos(config.model.image_size)
  graphdef, state = nnx.split(model)
  encode = jit_method(graphdef, "encode")
  decode = jit_method(graphdef, "decode", static_argnames=())
  recover = jit_method(graphdef, "recover_source", static_argnames=()) \
      if config.model.recovery.enabled else None
  rows = []
  keeps = sorted(set(config.model.keep_candidates or (config.model.num_keep,)))
  for k in keeps:
    enc = encode(state, jnp.asarray(x), num_keep=k)
    rec = np.asarray(decode(state, enc.tokens, enc.owner))
    with torch.no_grad():
      t_rec, t_enc = torch_model.reconstruct(torch.from_numpy(x).permute(0, 3, 1, 2), k)
    t_rec = t_rec.permute(0, 2, 3, 1).numpy()
    same = np.asarray(enc.indices) == t_enc.indices.numpy()
    tied = np.any(np.abs(np.asarray(enc.z, np.float32)) < TIE, axis=-1)
    row = {"K": k, "images": len(x),
           "recon_max_abs_diff": float(f"{np.abs(rec - t_rec).max():.3g}"),
           "codes_equal": f"{same.mean():.4%}",
           "codes_differing_untied": int(np.sum(~same & ~tied)),
           "tokens_with_tie": int(tied.sum()),
           "owners_equal": bool(np.array_equal(np.asarray(enc.owner), t_enc.owner.numpy())),
           "psnr_jax_db": round(float(_psnr(rec, x)), 2),
           "psnr_torch_db": round(float(_psnr(t_rec, x)), 2)}
    if recover is not None:
      j = np.asarray(recover(state, enc.tokens).owner)
      with torch.no_grad():
        t = torch_model.recover_source(t_enc.tokens).owner.numpy()
      row["recovery_argmax_equal"] = f"{np.mean(j == t):.4%}"
    rows.append(row)
  return rows


def _psnr(a, b):
  mse = np.mean((np.clip(a, -1, 1) - b) ** 2)
  return 10 * np.log10(4.0 / mse)


def mergear_parity(ar_workdir: str, export: str) -> list[dict]:
  from flax import nnx
  from mergevq_jax import pretrained
  from mergevq_jax.export.torch_modules import MergeAR
  from mergevq_jax.models.ar import merge_mask
  from mergevq_jax.models.ar.decode import Generator
  model, config, _ = pretrained.load_mergear(ar_workdir)
  torch_model = MergeAR.from_pretrained(export)
  codes_dir = config.data.codes_dir
  shard = sorted(glob.glob(os.path.join(codes_dir, "*.codes.npy")))[0]
  n = 4
  codes = np.load(shard)[:n].astype(np.int32)
  keep = np.asarray([model.keep_index(int(k)) for k in      # the shard holds K values
                     np.load(shard.replace(".codes.npy", ".keep.npy"))[:n]], np.int32)
  labels = np.load(shard.replace(".codes.npy", ".label.npy"))[:n].astype(np.int32)
  m = config.model
  rows = []
  for kind in ("merge", "causal"):
    mask = merge_mask.attention_mask(jnp.asarray(codes), kind, int(m.window))
    logits = nnx.jit(lambda md, *a: md(*a))(model, jnp.asarray(codes), jnp.asarray(labels),
                                            jnp.asarray(keep), mask)
    with torch.no_grad():
      t_logits = torch_model(torch.from_numpy(codes).long(), torch.from_numpy(labels).long(),
                             torch.from_numpy(keep).long(),
                             torch.from_numpy(np.array(mask)))
    diff = max(float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(logits, t_logits))
    rows.append({"check": f"teacher-forced logits, {kind} mask", "value": f"{diff:.2e}"})
  gen_classes = [int(c) for c in labels]
  k = int(m.keep_values[len(m.keep_values) // 2])
  for mode in ("merge", "causal"):
    gen = Generator(model, mode=mode)
    for cfg in (1.0, 3.0):
      j_codes, j_stats = gen(jax.random.key(0), gen_classes, k, temperature=0.0, cfg_scale=cfg)
      t0 = time.time()
      with torch.no_grad():
        t_codes, t_stats = torch_model.generate(gen_classes, k, temperature=0.0, cfg_scale=cfg,
                                                mode=mode)
      seconds = time.time() - t0
      same = np.asarray(j_codes) == t_codes.numpy()
      stats_equal = all(np.array_equal(np.asarray(getattr(j_stats, f)),
                                       getattr(t_stats, f).numpy())
                        for f in ("kept_slots_used", "overflow"))
      cache = "pruned" if mode == "merge" else "full"
      rows.append({"check": f"greedy sample K={k}, {cache} cache, cfg {cfg}",
                   "value": f"codes equal {same.mean():.2%}, stats equal {stats_equal}, "
                            f"torch {seconds:.1f} s"})
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="tokenizer run (the main job's workdir)")
  p.add_argument("--ar_workdir", default="", help="MergeAR run (default <workdir>/mergear)")
  p.add_argument("--out", required=True, help="export directory root")
  a = p.parse_args()
  from mergevq_jax.export import authors
  from mergevq_jax.export.exporter import export_run
  from mergevq_jax.run_dir import load_config
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  report: dict = {"workdir": a.workdir, "exports": {}}
  tok_out = os.path.join(a.out, "tokenizer")
  report["exports"]["tokenizer"] = export_run(a.workdir, tok_out)
  if authors.supported(load_config(a.workdir)):
    report["exports"]["tokenizer_authors"] = export_run(
        a.workdir, os.path.join(a.out, "tokenizer_authors"), layout="authors")
  ar_workdir = a.ar_workdir or os.path.join(a.workdir, "mergear")
  has_ar = os.path.exists(os.path.join(ar_workdir, "config.json"))
  if has_ar:
    report["exports"]["mergear"] = export_run(ar_workdir, os.path.join(a.out, "mergear"))
  for name, e in report["exports"].items():
    print(f"{name}: step {e['step']}, {e['weights']} weights, {e['layout']} layout, "
          f"{e['num_parameters'] / 1e6:.2f}M parameters, exported in {e['seconds']} s")
    for f, size in e["files"].items():
      print(f"  {f:<40} {size / 1e6:9.2f} MB")
  report["tokenizer"] = tokenizer_parity(a.workdir, tok_out)
  print("\nTokenizer, JAX vs PyTorch (fp32, real photos):\n" + _table(report["tokenizer"]))
  if "tokenizer_authors" in report["exports"]:
    report["tokenizer_from_authors_layout"] = tokenizer_parity(
        a.workdir, os.path.join(a.out, "tokenizer_authors"))
    worst = max(r["recon_max_abs_diff"] for r in report["tokenizer_from_authors_layout"])
    print(f"\nfrom the authors' layout export: recon max abs diff {worst:.2e}")
  if has_ar:
    report["mergear"] = mergear_parity(ar_workdir, os.path.join(a.out, "mergear"))
    print("\nMergeAR, JAX vs PyTorch (fp32, the run's codes):\n" + _table(report["mergear"]))
  report.update(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, jax=jax.__version__)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    json.dump(report, f, indent=1)
  print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
  main()
