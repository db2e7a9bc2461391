"""Reconstruct your own images with a trained tokenizer and draw its merge groups.

  python -m mergevq_jax.reconstruct --workdir=RUN --images=a.jpg,b.png [c.webp ...] \
      [--num_keep=16,36,64] [--recovered] --out=DIR

Any image PIL reads (EXIF orientation honoured; grayscale, palette, RGBA, 16-bit
converted) is resized and centre-cropped as the run's eval views (shorter side -> image
size). Per image, DIR/<name>.png shows the original, the reconstruction at each K with its
PSNR, and the merge groups of the source matrix over the image (each kept token's patches
in one colour, group borders dark, the kept token's own patch ringed); --recovered adds
the learned source recovery's groups (predicted from the K tokens alone). DIR/
reconstruct.json has per image and K: PSNR, LPIPS (when the eval extra's weights are
installed), the K codes and the group sizes.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from mergevq_jax import cli, files

_WORKDIR = flags.DEFINE_string("workdir", None, "Tokenizer run directory.")
_IMAGES = flags.DEFINE_list("images", [], "Image files (also as extra arguments).")
_KEEP = flags.DEFINE_list("num_keep", [], "Merge instructions K (default: the run's keep "
                          "candidates, or num_keep).")
_RECOVERED = flags.DEFINE_bool("recovered", False, "Also draw the learned source "
                               "recovery's groups.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_RAW = flags.DEFINE_bool("raw_weights", False, "Use the raw weights instead of the EMA.")
_LPIPS = flags.DEFINE_string("lpips", "auto", "LPIPS weights ('auto': the eval extra's; "
                             "'': none).")


def _stem_names(paths: list[str]) -> list[str]:
  """Unique output names from the file names (a.jpg, x/a.png -> a, a_2)."""
  out, seen = [], {}
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0] or "image"
    seen[stem] = seen.get(stem, 0) + 1
    out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
  return out


def main(argv):
  from mergevq_jax import pretrained
  from mergevq_jax.eval.reconstruction import reconstruct_images
  from mergevq_jax.images import load_image, save_png, to_uint8
  from mergevq_jax.overlay import group_overlay, labelled_panel, upscale
  paths = list(_IMAGES.value) + list(argv[1:])
  if not _WORKDIR.value or not paths:
    raise ValueError("--workdir=<tokenizer run> and at least one image (--images=a.jpg,b.png "
                     "or as arguments) are required")
  out_dir = cli.output_dir(_OUT.value, "--out")
  try:
    keeps = [int(k) for k in _KEEP.value]
  except ValueError:
    raise ValueError(f"--num_keep must be comma-separated integers, got "
                     f"{','.join(_KEEP.value)!r}") from None
  tokenizer, config, step = pretrained.load_tokenizer(_WORKDIR.value, use_ema=not _RAW.value)
  m = config.model
  keeps = keeps or sorted(set(int(k) for k in m.keep_candidates)) or [int(m.num_keep)]
  for k in keeps:
    try:
      tokenizer.schedule(k)
    except ValueError as e:
      raise ValueError(f"--num_keep={k}: {e}") from None
  if _RECOVERED.value and tokenizer.recovery is None:
    raise ValueError("--recovered: this run has no source-recovery module "
                     "(model.recovery.enabled=False)")
  size = int(m.image_size)
  images = np.stack([load_image(p, size) for p in paths])
  lpips = None
  if _LPIPS.value and size >= 16:
    from mergevq_jax.nets import packaged, vgg_lpips
    path = packaged.find("lpips") if _LPIPS.value == "auto" else _LPIPS.value
    lpips = vgg_lpips.load_lpips(path) if path else None
  results = reconstruct_images(tokenizer, images, keeps, _RECOVERED.value, lpips)
  grid = tokenizer.grid
  report = {"workdir": files.join(_WORKDIR.value), "step": step, "image_size": size,
            "grid": list(grid), "num_keep": keeps, "images": []}
  for i, (path, name) in enumerate(zip(paths, _stem_names(paths))):
    original = to_uint8(images[i])
    big = upscale(original)     # groups are drawn at display size: thin borders
    rows = [[big], [None]]
    caps = [["original"], [""]]
    entry = {"file": path, "panel": files.join(out_dir, f"{name}.png"), "per_k": {}}
    if _RECOVERED.value:
      rows.append([None])
      caps.append([""])
    for k in keeps:
      r = results[k]
      rows[0].append(upscale(to_uint8(r["recon"][i])))
      caps[0].append(f"K={k}  {r['psnr'][i]:.2f} dB")
      rows[1].append(group_overlay(big, r["owner"][i], r["anchor"][i], grid))
      caps[1].append(f"K={k} merge groups")
      row = {"psnr": float(r["psnr"][i]), "codes": r["indices"][i].tolist(),
             "group_sizes": [int(s) for s in np.round(r["size"][i])],
             "anchors": r["anchor"][i].tolist()}
      if "lpips" in r:
        row["lpips"] = float(r["lpips"][i])
      if _RECOVERED.value:
        rec = r["recovered"]
        rows[2].append(group_overlay(big, rec["owner"][i], None, grid))
        caps[2].append(f"K={k} recovered  {rec['psnr'][i]:.2f} dB")
        row["recovered"] = {
            "psnr": float(rec["psnr"][i]),
            "source_accuracy": float(rec["source_accuracy"][i]),
            "group_sizes": np.bincount(rec["owner"][i], minlength=k).tolist()}
      entry["per_k"][str(k)] = row
    save_png(entry["panel"], labelled_panel(rows, caps))
    report["images"].append(entry)
  files.write_json(files.join(out_dir, "reconstruct.json"), report)
  print(json.dumps({"out": out_dir, "panels": [e["panel"] for e in report["images"]],
                    "psnr": {e["file"]: {k: round(v["psnr"], 2) for k, v in e["per_k"].items()}
                             for e in report["images"]}}, indent=1))
  return 0


if __name__ == "__main__":
  cli.run(main)
