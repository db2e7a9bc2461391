"""Training logs: scalars to <workdir>/metrics.jsonl and TensorBoard, images to PNG files
and TensorBoard.

Only process 0 writes; other processes get a logger that does nothing. TensorBoard
event files are written with tensorboardX (a dependency; no TensorFlow needed).
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

from mergevq_jax.images import save_png


class Logger:

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self.jsonl.flush()
    for k, v in values.items():
      self.writer.add_scalar(k, v, int(step))

  def image(self, step: int, name: str, image: np.ndarray) -> str | None:
    """Write <workdir>/<name>.png (and to TensorBoard); returns the path."""
    if not self.active:
      return None
    path = os.path.join(self.workdir, f"{name}.png")
    save_png(path, image)
    self.writer.add_image(name, image, int(step), dataformats="HWC")
    return path

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      self.writer.close()
