"""Orbax checkpoints of the whole train state, the data iterator and run metadata.

Layout: <workdir>/checkpoints/<step>/{state, data, meta}. Orbax writes each checkpoint
into a temporary directory and renames it when complete, so a crash or kill never
leaves a half-written checkpoint that `latest_step()` would offer. Restoring goes
through an abstract target with shardings, so a checkpoint restores onto any mesh.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LAYOUT_VERSION = "mergevq_jax.stage1.v1"          # the tokenizer's TrainState
MERGEAR_LAYOUT_VERSION = "mergevq_jax.mergear.v1"  # MergeAR's ARTrainState


def _data_args(iterator, save: bool):
  if iterator is None:
    return None
  import grain
  return grain.checkpoint.CheckpointSave(iterator) if save else grain.checkpoint.CheckpointRestore(iterator)


class Checkpointer:

  def __init__(self, workdir: str, keep: int, async_save: bool = False,
               layout: str = LAYOUT_VERSION):
    self.layout = layout
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterator=None, meta: dict | None = None,
           force: bool = False) -> None:
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({"layout": self.layout, "step": int(step),
                                        **(meta or {})})}
    data = _data_args(iterator, save=True)
    if data is not None:
      items["data"] = data
    self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state: Any, shardings: Any, iterator=None,
              step: int | None = None) -> tuple[Any, dict]:
    """Restore (state placed per `shardings`, meta); the iterator is restored in place."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {self.directory}")
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
    items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
    data = _data_args(iterator, save=False)
    if data is not None:
      items["data"] = data
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    meta = out["meta"]
    if meta.get("layout") != self.layout:
      raise ValueError(f"checkpoint {self.directory}/{step} has layout {meta.get('layout')!r}, "
                       f"expected {self.layout!r}")
    return out["state"], meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
