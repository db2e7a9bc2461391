"""Command line: merge / re-save public PyTorch releases of the frozen networks as .npz, so
that training needs no torch.

  python -m mergevq_jax.nets.convert lpips --vgg vgg16.pth --lin vgg.pth --out lpips_vgg.npz
  python -m mergevq_jax.nets.convert dinov2 --in model.safetensors --out dinov2_vitb14.npz
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from mergevq_jax import cli
from mergevq_jax.nets.weights import read_state_dict, save_npz


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mergevq_jax.nets.convert",
      description="Convert public PyTorch weights of the frozen nets into one .npz.")
  sub = parser.add_subparsers(dest="net", required=True)
  p = sub.add_parser("lpips", help="merge torchvision vgg16 + lpips vgg.pth (v0.1)")
  p.add_argument("--vgg", required=True, help="torchvision VGG16 weights (features.N.*)")
  p.add_argument("--lin", required=True, help="lpips package weights/v0.1/vgg.pth (linN.*)")
  p.add_argument("--out", required=True, help="output .npz")
  p = sub.add_parser("dinov2", help="check a DINOv2 ViT (HF or timm layout) and save .npz")
  p.add_argument("--in", dest="src", required=True, help=".pth/.pt/.bin/.safetensors/.npz")
  p.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  try:
    return convert(args)
  except cli.USER_ERRORS as e:
    parser.exit(2, f"error: {e}\n")


def convert(args) -> int:
  cli.output_file(args.out, "--out", (".npz",))   # before reading anything
  if args.net == "lpips":
    from mergevq_jax.nets import vgg_lpips
    vgg = read_state_dict(args.vgg)
    lin = read_state_dict(args.lin)
    merged = {k: v for k, v in vgg.items() if not k.startswith("classifier.")}
    for k, v in lin.items():
      if k in merged:
        raise ValueError(f"key '{k}' is in both {args.vgg} and {args.lin}")
      merged[k] = v
    state = vgg_lpips.canonical_state(merged, f"{args.vgg} + {args.lin}")
  else:
    from mergevq_jax.nets import dinov2
    state = dinov2.canonical_state(read_state_dict(args.src), args.src)
  save_npz(args.out, state)
  n = sum(int(np.prod(v.shape)) for v in state.values())
  print(f"wrote {args.out}: {len(state)} tensors, {n:,} values")
  return 0


if __name__ == "__main__":
  sys.exit(main())
