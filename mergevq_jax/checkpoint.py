"""Orbax checkpoints of a train state and run metadata (the run directory around them:
`mergevq_jax.run_dir`). The data position needs no item: batch j of the training stream
is a function of j (`data/pipeline.py`), so a run resumes its data at its step on any
number of processes (checkpoints of earlier versions carry a grain 'data' item, ignored).

Layout: <workdir>/checkpoints/<step>/{params, ema, train, meta}. A train state is a
NamedTuple with `params` and `ema` fields (the model weights and their EMA) and any others (optimizer states, counters): the two weight fields are
checkpoint items of their own, so `restore_weights` reads one of them without building
the optimizer states (`mergevq_jax.pretrained`). `meta` carries the layout tag and the
step, and is read first: a checkpoint written by another layout is a clear error, never a
misread. Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a crash or kill never leaves a half-written checkpoint that `latest_step()`
would offer. Restoring goes through abstract targets with shardings, so a checkpoint
restores onto any mesh.
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from mergevq_jax import files, sharding

# Layout tags, one per stage (v1: the whole train state as one 'state' item).
LAYOUTS = {"tokenizer": "mergevq_jax.tokenizer.v2", "mergear": "mergevq_jax.mergear.v2"}
TOKENIZER_LAYOUT, MERGEAR_LAYOUT = LAYOUTS["tokenizer"], LAYOUTS["mergear"]
WEIGHTS = ("params", "ema")   # train-state fields saved as items of their own


def _split(state) -> tuple[dict, dict]:
  """A train state -> ({params, ema}, {every other field})."""
  fields = state._asdict()
  return ({k: fields[k] for k in WEIGHTS}, {k: v for k, v in fields.items() if k not in WEIGHTS})


def _has_leaves(tree) -> bool:
  return bool(jax.tree.leaves(tree))


class Checkpointer:
  """Orbax CheckpointManager of <workdir>/checkpoints for train states of one layout."""

  def __init__(self, workdir: str, keep: int, async_save: bool = False,
               layout: str = TOKENIZER_LAYOUT):
    self.layout = layout
    self.directory = files.join(workdir, "checkpoints")   # local (absolute) or gs://...
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict | None = None,
           force: bool = False) -> None:
    weights, rest = _split(state)
    items = {name: ocp.args.StandardSave(tree) for name, tree in weights.items()
             if _has_leaves(tree)}   # MergeAR without EMA has ema = {}
    items["train"] = ocp.args.StandardSave(rest)
    items["meta"] = ocp.args.JsonSave({"layout": self.layout, "step": int(step), **(meta or {})})
    self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def step_and_meta(self, step: int | None = None) -> tuple[int, dict]:
    """(step, meta item) of a checkpoint (default: the latest); ValueError for another
    layout or none."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {self.directory}")
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("layout") != self.layout:
      raise ValueError(f"checkpoint {self.directory}/{step} has layout {meta.get('layout')!r}, "
                       f"this code reads {self.layout!r}: it was written by another version "
                       f"of mergevq_jax (or for another stage) and cannot be restored")
    return step, meta

  def restore(self, abstract_state: Any, shardings: Any,
              step: int | None = None) -> tuple[Any, dict]:
    """Restore (state placed per `shardings`, meta)."""
    step, meta = self.step_and_meta(step)
    weights, rest = _split(abstract_state)
    weight_shardings, rest_shardings = _split(shardings)
    items = {name: ocp.args.StandardRestore(
                 sharding.abstract_arrays(tree, weight_shardings[name]))
             for name, tree in weights.items() if _has_leaves(tree)}
    items["train"] = ocp.args.StandardRestore(sharding.abstract_arrays(rest, rest_shardings))
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    restored = {name: out[name] if name in items else tree for name, tree in weights.items()}
    return type(abstract_state)(**restored, **out["train"]), meta

  def restore_weights(self, field: str, abstract: Any, shardings: Any,
                      step: int | None = None) -> tuple[Any, dict]:
    """Only the `field` ('params' or 'ema') item, placed per `shardings`: (weights, meta)."""
    if field not in WEIGHTS:
      raise ValueError(f"field must be one of {WEIGHTS}, got {field!r}")
    step, meta = self.step_and_meta(step)
    out = self.manager.restore(step, args=ocp.args.Composite(
        **{field: ocp.args.StandardRestore(sharding.abstract_arrays(abstract, shardings))}))
    return out[field], meta

  def reached_preemption(self, step: int) -> bool:
    """True at the step all hosts agreed to save at after a preemption notice (JAX's
    preemption service; always False in a single process)."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
