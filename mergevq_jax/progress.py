"""Progress of long work (training steps, tokenized images), on process 0 only.

On a terminal: a tqdm bar. Elsewhere (a batch job's log file, a pipe): one line at the
first update, then at most one every `every_s` seconds, and one at the end, e.g.

  train: step 120/1000 (12.0%) 1.93 step/s, ETA 7m36s | loss=0.1234
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

import jax

EVERY_S = 60.0


def format_seconds(seconds: float) -> str:
  """'7m36s', '2h05m', '42s'."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


class Progress:
  """update(n) after each unit of work; set_postfix(**values) for the latest metrics."""

  def __init__(self, total: int, initial: int = 0, unit: str = "step", label: str = "",
               every_s: float = EVERY_S, stream: TextIO | None = None,
               tty: bool | None = None):
    self.stream = stream or sys.stderr
    self.total, self.done, self.unit, self.label = total, initial, unit, label
    self.initial, self.every_s = initial, every_s
    self.quiet = jax.process_index() != 0
    tty = self.stream.isatty() if tty is None else tty
    self.bar = None
    if tty and not self.quiet:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, unit=unit, desc=label or None,
                      dynamic_ncols=True, file=self.stream)
    self.postfix: dict = {}
    self.t0 = time.time()
    self.last_line = None   # time of the last line printed (non-terminal)
    self.printed = initial  # `done` at that line

  def set_postfix(self, **values) -> None:
    self.postfix = values
    if self.bar is not None:
      self.bar.set_postfix(**values)

  def update(self, n: int = 1) -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif not self.quiet:
      now = time.time()
      if self.last_line is None or now - self.last_line >= self.every_s:
        self.print_line(now)

  def line(self, now: float | None = None) -> str:
    """'label: unit done/total (pct) rate unit/s, ETA ... | k=v ...'."""
    elapsed = max((now or time.time()) - self.t0, 1e-9)
    rate = (self.done - self.initial) / elapsed
    text = f"{self.unit} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.1f}%)"
    if self.done > self.initial:
      left = (self.total - self.done) / rate if rate > 0 else float("inf")
      text += f" {rate:.3g} {self.unit}/s"
      text += f", ETA {format_seconds(left)}" if self.done < self.total else (
          f", took {format_seconds(elapsed)}")
    if self.postfix:
      text += " | " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
    return f"{self.label}: {text}" if self.label else text

  def print_line(self, now: float | None = None) -> None:
    self.last_line, self.printed = now or time.time(), self.done
    print(self.line(now), file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    elif not self.quiet and self.done != self.printed:
      self.print_line()
