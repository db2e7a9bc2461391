"""Training logs: scalars to <workdir>/metrics.jsonl and TensorBoard, images to PNG files
and TensorBoard.

Only process 0 writes; other processes get a logger that does nothing. TensorBoard
event files are written with tensorboardX (a dependency; no TensorFlow needed). A resumed
run starts its logs at the restored step: what a previous attempt logged after that step
(lost with the state it came from) is dropped from both, so every step is logged once.
Non-finite values (a diverging run) go to metrics.jsonl only.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

from mergevq_jax.images import save_png


def _drop_after(path: str, step: int) -> None:
  """Rewrite a metrics.jsonl without the records of steps after `step` (atomically)."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
  if len(keep) == len(lines):
    return
  with open(path + ".tmp", "w") as f:
    f.writelines(keep)
  os.replace(path + ".tmp", path)


class Logger:

  def __init__(self, workdir: str, start_step: int = 0):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_after(path, start_step)
    self.jsonl = open(path, "a")
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                purge_step=start_step + 1 if start_step else None)

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self.jsonl.flush()
    for k, v in values.items():
      if math.isfinite(v):
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
