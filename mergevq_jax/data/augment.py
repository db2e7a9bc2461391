"""Image views for training and evaluation (numpy + PIL; runs inside grain workers).

All randomness comes from the `np.random.Generator` passed in, so a view is a pure
function of (image, generator state): grain's `random_map` hands each element a generator
derived from (seed, element index), which makes the pipeline reproducible and resumable.

Views (MERGEVQ.md 5.3):
  main   random-resized-crop (area fraction `data.crop_scale`, aspect 3/4..4/3) to
         image_size, random horizontal flip; float32 in [-1, 1]
  weak   (teacher) shorter side -> align_size, random align_size crop, ImageNet mean/std
  strong (student) random-resized-crop (area `data.strong_scale`), flip, align_size;
         float32 in [-1, 1] (the student encoder's input range)
  eval   shorter side -> image_size, center crop; float32 in [-1, 1]
Images smaller than the output are upscaled; a 0-pixel image is a ValueError.
Resampling is PIL bicubic (antialiased when shrinking, clipped to 0..255).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from mergevq_jax.data.sources import array_to_rgb_uint8

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
ASPECT_RANGE = (3 / 4, 4 / 3)
RESAMPLE = Image.BICUBIC

Box = tuple[float, float, float, float]          # left, top, right, bottom (PIL convention)


def to_pil(image: Any) -> Image.Image:
  """uint8 (H, W), (H, W, 1|3|4) array or PIL image -> RGB PIL image; ValueError if empty."""
  if isinstance(image, Image.Image):
    if image.width == 0 or image.height == 0:
      raise ValueError(f"degenerate image with 0 pixels (size {image.size})")
    return image if image.mode == "RGB" else image.convert("RGB")
  arr = array_to_rgb_uint8(image)  # the sources' normalisation (alpha on white)
  return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def check_scale(scale, what: str = "scale") -> tuple[float, float]:
  """(min, max) area fractions; ValueError naming `what` unless 0 < min <= max <= 1."""
  if (not isinstance(scale, (tuple, list)) or len(scale) != 2
      or not all(isinstance(s, (int, float)) for s in scale)):
    raise ValueError(f"{what} must be a pair (min, max) of area fractions such as "
                     f"(0.8, 1.0), got {scale!r}")
  lo, hi = (float(s) for s in scale)
  if not 0.0 < lo <= hi <= 1.0:
    raise ValueError(f"{what} must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
  return lo, hi


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=ASPECT_RANGE) -> Box:
  """Crop box with area fraction ~ U(scale) and log-uniform aspect ratio (w/h) in `ratio`
  (the Inception / torchvision RandomResizedCrop rule: 10 tries, then a center crop with the
  aspect ratio clamped into range)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return (left, top, left + w, top + h)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  w, h = max(1, w), max(1, h)
  left, top = (width - w) // 2, (height - h) // 2
  return (left, top, left + w, top + h)


def shorter_side_crop_box(width: int, height: int, size: int,
                          rng: np.random.Generator | None = None) -> Box:
  """Box (in original pixels) equal to "resize the shorter side to `size`, then crop a
  size x size square" — centered, or at a random offset when `rng` is given. Resizing just
  the box is the same filter as resizing the whole image and cropping, but cheaper."""
  s = size / min(width, height)
  new_w, new_h = max(size, int(round(width * s))), max(size, int(round(height * s)))
  if rng is None:
    off_x, off_y = (new_w - size) // 2, (new_h - size) // 2
  else:
    off_x = int(rng.integers(0, new_w - size + 1))
    off_y = int(rng.integers(0, new_h - size + 1))
  fx, fy = width / new_w, height / new_h
  return (off_x * fx, off_y * fy, (off_x + size) * fx, (off_y + size) * fy)


def crop_resize(img: Image.Image, box: Box, size: int) -> np.ndarray:
  """uint8 (size, size, 3) of the box resized (bicubic; antialiased when shrinking)."""
  return np.asarray(img.resize((size, size), RESAMPLE, box=box))


def to_signed_unit(pixels: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1]."""
  return pixels.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def imagenet_normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 (x / 255 - mean) / std with the ImageNet statistics."""
  return (pixels.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


def _maybe_flip(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return np.ascontiguousarray(pixels[:, ::-1]) if rng.random() < 0.5 else pixels


def _check_size(size: int, what: str) -> int:
  size = int(size)
  if size <= 0:
    raise ValueError(f"{what} must be positive, got {size}")
  return size


def main_view(image, rng: np.random.Generator, size: int, scale=(0.8, 1.0)) -> np.ndarray:
  """Random-resized-crop (area fraction in `scale`, aspect 3/4..4/3) + flip, in [-1, 1]."""
  img = to_pil(image)
  box = random_resized_crop_box(img.width, img.height, rng, check_scale(scale, "crop_scale"))
  return to_signed_unit(_maybe_flip(crop_resize(img, box, _check_size(size, "size")), rng))


def strong_view(image, rng: np.random.Generator, size: int = 224,
                scale=(0.08, 1.0)) -> np.ndarray:
  """Student view: random-resized-crop (area in `scale`) + flip, in [-1, 1]."""
  img = to_pil(image)
  box = random_resized_crop_box(img.width, img.height, rng, check_scale(scale, "strong_scale"))
  return to_signed_unit(_maybe_flip(crop_resize(img, box, _check_size(size, "size")), rng))


def weak_view(image, rng: np.random.Generator, size: int = 224) -> np.ndarray:
  """Teacher view: shorter side -> size, random size x size crop, ImageNet-normalised."""
  img = to_pil(image)
  size = _check_size(size, "size")
  return imagenet_normalize(crop_resize(img, shorter_side_crop_box(img.width, img.height,
                                                                   size, rng), size))


def eval_view(image, size: int) -> np.ndarray:
  """Shorter side -> size, center crop; float32 in [-1, 1]. Deterministic."""
  img = to_pil(image)
  size = _check_size(size, "size")
  return to_signed_unit(crop_resize(img, shorter_side_crop_box(img.width, img.height, size),
                                    size))


class TrainAugment:
  """grain `random_map` transform: {'image', 'label'} -> {'image', 'label'[, 'weak',
  'strong']} with the main view in 'image'. Picklable (grain worker processes)."""

  def __init__(self, image_size: int, crop_scale=(0.8, 1.0), align_views: bool = False,
               align_size: int = 224, strong_scale=(0.08, 1.0)):
    self.image_size = _check_size(image_size, "model.image_size")
    self.crop_scale = check_scale(crop_scale, "data.crop_scale")
    self.align_views = bool(align_views)
    self.align_size = _check_size(align_size, "data.align_size")
    self.strong_scale = check_scale(strong_scale, "data.strong_scale")

  @classmethod
  def from_config(cls, config) -> "TrainAugment":
    d = config.data
    return cls(config.model.image_size, d.crop_scale, d.align_views, d.align_size,
               d.strong_scale)

  def __call__(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    img = to_pil(element["image"])
    out = {"image": main_view(img, rng, self.image_size, self.crop_scale),
           "label": np.int32(element["label"])}
    if self.align_views:
      out["weak"] = weak_view(img, rng, self.align_size)
      out["strong"] = strong_view(img, rng, self.align_size, self.strong_scale)
    return out


class EvalAugment:
  """grain `map` transform: {'image', 'label'} -> eval view in 'image', int32 'label'."""

  def __init__(self, image_size: int):
    self.image_size = _check_size(image_size, "model.image_size")

  def __call__(self, element: dict[str, Any]) -> dict[str, Any]:
    return {"image": eval_view(element["image"], self.image_size),
            "label": np.int32(element["label"])}
