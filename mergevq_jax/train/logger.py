"""Scalars to a JSONL file and TensorBoard, images to PNG grids and TensorBoard.

Only process 0 writes; other processes get a logger that does nothing. TensorBoard
event files are written with tensorboardX (no TensorFlow needed); if it is not
installed, only JSONL and PNG are written.
"""
from __future__ import annotations

import json
import os
import time

import jax
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
  from PIL import Image
  Image.fromarray(image).save(path)


class Logger:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.writer = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      self.writer = None

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self.jsonl.flush()
    if self.writer is not None:
      for k, v in values.items():
        self.writer.add_scalar(k, v, int(step))

  def image(self, step: int, name: str, image: np.ndarray) -> str | None:
    """Write <workdir>/<name>.png (and to TensorBoard); returns the path."""
    if not self.active:
      return None
    path = os.path.join(self.workdir, f"{name}.png")
    save_png(path, image)
    if self.writer is not None:
      self.writer.add_image(name, image, int(step), dataformats="HWC")
    return path

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      if self.writer is not None:
        self.writer.close()
