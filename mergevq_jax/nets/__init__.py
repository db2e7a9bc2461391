"""Frozen networks with weight import: LPIPS-VGG (perceptual loss) and DINOv2 (teacher).

Weights come from user-supplied local files (converted from the public PyTorch releases,
see `mergevq_jax.nets.convert`); nothing is downloaded. `weights` reads and checks state
dicts; `convert` is the command line only. Names are imported lazily.
"""
import importlib

_EXPORTS = {"DinoV2": "dinov2", "load_dinov2": "dinov2", "LPIPS": "vgg_lpips",
            "load_lpips": "vgg_lpips", "read_state_dict": "weights"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
