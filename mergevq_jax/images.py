"""Images as arrays and files: [-1, 1] floats to uint8, labelled grids, PNG, and any
image file as the eval view a run sees (`load_image`).

Used by training (reconstruction and sample grids), sampling and evaluation.
"""
from __future__ import annotations

import io

import numpy as np


def to_uint8(images) -> np.ndarray:
  """(..., H, W, 3) floats in [-1, 1] -> uint8."""
  return np.asarray(np.clip((np.asarray(images, np.float32) + 1) * 127.5, 0, 255) + 0.5,
                    np.uint8)


def image_grid(rows: list[np.ndarray], labels: list[str] | None = None, pad: int = 2
               ) -> np.ndarray:
  """rows of (N, H, W, 3) uint8 (same N, H, W) -> one grid image, with an optional text
  label to the left of each row."""
  n, h, w, _ = rows[0].shape
  label_w = 0
  if labels:
    from PIL import ImageFont
    font = ImageFont.load_default()
    label_w = max(int(font.getlength(text)) for text in labels) + 2 * pad
  grid = np.full((len(rows) * (h + pad) + pad, label_w + n * (w + pad) + pad, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i in range(n):
      y, x = pad + r * (h + pad), label_w + pad + i * (w + pad)
      grid[y:y + h, x:x + w] = row[i]
  if labels:
    from PIL import Image, ImageDraw
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for r, text in enumerate(labels):
      draw.text((pad, pad + r * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0), font=font)
    grid = np.asarray(image)
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Write a (H, W, 3) uint8 image as PNG (a local path or a gs://... URI)."""
  from PIL import Image

  from mergevq_jax import files
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  files.write_bytes(path, buffer.getvalue())


def load_image(path: str, size: int) -> np.ndarray:
  """(size, size, 3) float32 in [-1, 1]: EXIF-rotated, RGB, shorter side -> size, centre."""
  from PIL import Image, ImageOps

  from mergevq_jax import files
  from mergevq_jax.data.augment import eval_view
  from mergevq_jax.data.sources import to_rgb_uint8
  try:
    with files.open_for_reading(path) as f, Image.open(f) as img:
      img.load()
      return eval_view(to_rgb_uint8(ImageOps.exif_transpose(img)), size)
  except FileNotFoundError:
    raise FileNotFoundError(f"image not found: {path}") from None
  except OSError as e:
    raise ValueError(f"{path}: not an image PIL can read ({e})") from None
