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
import shutil
import tempfile
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

from mergevq_jax import files
from mergevq_jax.images import save_png


def _drop_after(text: str, step: int) -> str:
  """metrics.jsonl content without the records of steps after `step`."""
  return "".join(line + "\n" for line in text.splitlines()
                 if line.strip() and json.loads(line)["step"] <= step)


class Logger:
  """Writes <workdir>/metrics.jsonl, <workdir>/tensorboard/ and <workdir>/<name>.png.

  A workdir in an object store (gs://...) cannot be appended to: metrics.jsonl and the
  TensorBoard event files (written to a local folder) are uploaded every `SYNC_S` seconds
  and at close; images are uploaded when written.
  """

  SYNC_S = 60.0

  def __init__(self, workdir: str, start_step: int = 0):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    if not self.active:
      return
    self.local = files.is_local(workdir)
    files.path(workdir).mkdir(parents=True, exist_ok=True)
    metrics = files.path(workdir) / "metrics.jsonl"
    old = files.read_text(metrics) if metrics.exists() else ""
    self.metrics = _drop_after(old, start_step)
    if self.metrics != old or not self.local:
      files.write_text(metrics, self.metrics)
    if self.local:
      self.jsonl = metrics.open("a")
      events = os.fspath(metrics.parent / "tensorboard")
    else:
      self.spool = tempfile.mkdtemp(prefix="mergevq_jax_tensorboard_")
      events = self.spool
    self.writer = SummaryWriter(events, purge_step=start_step + 1 if start_step else None)
    self.synced = time.time()

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    line = json.dumps({"step": int(step), "time": time.time(), **values}) + "\n"
    if self.local:
      self.jsonl.write(line)
      self.jsonl.flush()
    else:
      self.metrics += line
    for k, v in values.items():
      if math.isfinite(v):
        self.writer.add_scalar(k, v, int(step))
    self._sync()

  def image(self, step: int, name: str, image: np.ndarray) -> str | None:
    """Write <workdir>/<name>.png (and to TensorBoard); returns the path."""
    if not self.active:
      return None
    path = files.join(self.workdir, f"{name}.png")
    save_png(path, image)
    self.writer.add_image(name, image, int(step), dataformats="HWC")
    self._sync()
    return path

  def _sync(self, force: bool = False) -> None:
    """Upload metrics.jsonl and the event files (remote workdirs only)."""
    if self.local or not (force or time.time() - self.synced >= self.SYNC_S):
      return
    self.writer.flush()
    files.write_text(files.join(self.workdir, "metrics.jsonl"), self.metrics)
    for name in sorted(os.listdir(self.spool)):
      files.copy(os.path.join(self.spool, name), files.join(self.workdir, "tensorboard", name))
    self.synced = time.time()

  def close(self) -> None:
    if not self.active:
      return
    self.writer.close()
    if self.local:
      self.jsonl.close()
    else:
      self._sync(force=True)
      shutil.rmtree(self.spool, ignore_errors=True)
