"""An export directory (either layout) -> a new run directory that `pretrained.load_tokenizer`
/ `load_mergear` read and the trainer fine-tunes.

  python -m mergevq_jax.export.importer --export=DIR --workdir=NEW_RUN

The run directory gets the export's config.json and a checkpoint at step 0 holding a fresh
train state (new optimizer state, discriminator, counters) whose `params` and `ema` are the
exported weights: `python -m mergevq_jax.main --config=... --workdir=NEW_RUN` (or the
stage's trainer) resumes from it, i.e. fine-tunes from the exported weights with the
config's schedule. Every tensor is checked against the model before anything is written.
"""
from __future__ import annotations

import time

from mergevq_jax import checkpoint, files, run_dir
from mergevq_jax.export import export_dir


def read_native(path: str):
  """(export info, its config as a ConfigDict, tensors in the native layout) of an export
  directory; the authors' layout is mapped back (tokenizer)."""
  info = export_dir.read_info(path)
  config = run_dir.config_from_json(info["config"])
  tensors = export_dir.read_tensors(path)
  if info["layout"] == "authors":
    from mergevq_jax.export import authors
    tensors = authors.from_authors(tensors, config)
  return info, config, tensors


def _state_module(stage: str):
  if stage == "tokenizer":
    from mergevq_jax.train import tokenizer_state
    return tokenizer_state
  from mergevq_jax.train import ar_state
  return ar_state


def import_export(path: str, workdir: str) -> dict:
  """Write run directory `workdir` (new, or without checkpoints) from export `path`.
  Returns {'stage', 'step' (of the exported run), 'workdir', 'seconds'}."""
  from mergevq_jax import sharding
  from mergevq_jax.export import native
  t0 = time.time()
  info, config, tensors = read_native(path)
  stage = info["stage"]
  if run_dir.read_stored_config(workdir) is not None:
    raise ValueError(f"--workdir={workdir} is already a run directory: import into a new "
                     f"one (fine-tuning starts from the imported weights at step 0)")
  states = _state_module(stage)
  abstract = states.abstract_state(config)
  # Every tensor against the model before any state is built or anything is written.
  export_dir.check_tensors(tensors, native.expected_shapes(abstract.params), path)
  with run_dir.RunLock(workdir):
    mesh = sharding.make_mesh((-1, 1, 1))
    state, _ = states.create_state(config, mesh, sharding.DEFAULT_RULES)
    params = native.replace_params(state.params, tensors, path)
    ema = params if stage == "tokenizer" or config.train.ema_decay > 0 else state.ema
    state = state._replace(params=params, ema=ema)
    run_dir.save_config(workdir, config)
    ckpt = checkpoint.Checkpointer(workdir, keep=1, layout=checkpoint.LAYOUTS[stage])
    try:
      ckpt.save(0, state, {"imported_from": path, "export_step": info.get("step"),
                           "export_weights": info.get("weights"), "export_layout": info["layout"]})
      ckpt.wait()
    finally:
      ckpt.close()
  return {"stage": stage, "step": info.get("step"), "workdir": workdir,
          "seconds": round(time.time() - t0, 1)}


def main(argv):
  del argv
  from absl import flags
  export, workdir = flags.FLAGS.export, flags.FLAGS.workdir
  if not export or not workdir:
    raise ValueError("--export and --workdir are required")
  if files.is_local(workdir):
    from mergevq_jax import cli
    cli.output_dir(workdir, "--workdir")
  r = import_export(export, workdir)
  print(f"imported the {r['stage']} of {export} (step {r['step']} of its run) into "
        f"{workdir} as step 0 in {r['seconds']} s; load it with mergevq_jax.pretrained."
        f"load_{'tokenizer' if r['stage'] == 'tokenizer' else 'mergear'}({workdir!r}), or "
        f"train on from it with --workdir={workdir}")


if __name__ == "__main__":
  import os
  os.environ.setdefault("JAX_PLATFORMS", "cpu")   # a run directory is written from the host
  from absl import flags
  from mergevq_jax import cli
  flags.DEFINE_string("export", None, "Export directory (python -m mergevq_jax.export).")
  flags.DEFINE_string("workdir", None, "New run directory to write.")
  cli.run(main)
