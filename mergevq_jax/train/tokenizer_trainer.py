"""Stage-1 training: the tokenizer's `Stage` for the training loop (`loop.run`).

`train(config, workdir)` runs (or resumes) a run and returns its summary dict, which is
also written to <workdir>/summary.json. Everything that can be checked before
compiling is checked first (data, weight files, batch divisibility, K candidates). Each
step draws its K from model.keep_candidates; every train.eval_every steps (and at the
start and end) a fixed batch is reconstructed at the smallest K and at model.num_keep
(PSNR, codebook usage, reconstructions.png).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mergevq_jax import host_memory, sharding
from mergevq_jax.eval import batches
from mergevq_jax.checkpoint import TOKENIZER_LAYOUT
from mergevq_jax.config.tokenizer import validate_config
from mergevq_jax.eval.reconstruction import evaluate, evaluate_set, reconstruct_fn
from mergevq_jax.nets import packaged
from mergevq_jax.nets.vgg_lpips import PACKAGED as PACKAGED_LPIPS
from mergevq_jax.images import image_grid, to_uint8
from mergevq_jax.train import loop
from mergevq_jax.train.tokenizer_state import abstract_state, create_state, graphs as make_graphs
from mergevq_jax.train.tokenizer_step import Frozen, StepPerK, jit_train_step, make_train_step


def check_train_config(config, mesh) -> None:
  """ValueError naming the key or file, before anything is compiled."""
  validate_config(config)
  loop.check_train_common(config, mesh)
  t, lo = config.train, config.loss
  dp = loop.data_parallel(mesh)
  if t.batch_size % t.accum_steps or (t.batch_size // t.accum_steps) % dp:
    raise ValueError(f"train.batch_size={t.batch_size} / train.accum_steps={t.accum_steps} "
                     f"must be a whole multiple of the {dp} data-parallel devices")
  for key in ("lpips_path", "teacher_path"):
    path = lo[key]
    if key == "lpips_path" and path == PACKAGED_LPIPS:
      packaged.require("lpips", "set loss.lpips_path to a weight file, or '' to switch off")
    elif path and not os.path.isfile(path):
      raise ValueError(f"loss.{key}={path!r}: file not found (set it to '' to switch off)")
  e = config.eval
  if e.num_images < 0 or e.batch_size < 1:
    raise ValueError(f"eval.num_images must be >= 0 and eval.batch_size >= 1, got "
                     f"{e.num_images}, {e.batch_size}")
  for key in ("inception", "lpips"):
    if e.num_images and e[key] not in ("", "auto", PACKAGED_LPIPS) and not os.path.isfile(e[key]):
      raise ValueError(f"eval.{key}={e[key]!r}: file not found ('auto': the installed eval "
                       f"extra's weights; '': off)")
  if lo.pixel not in ("l1", "l2"):
    raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {lo.pixel!r}")


def sample_num_keep(config, step: int) -> int:
  """K for a step: drawn from model.keep_candidates with model.keep_probs, a pure
  function of (seed, step) so that resumed runs draw the same sequence."""
  m = config.model
  if not m.keep_candidates:
    return m.num_keep
  rng = np.random.default_rng([config.seed, step])
  return int(rng.choice(np.asarray(m.keep_candidates), p=np.asarray(m.keep_probs)))


def compile_workers(platform: str, num_candidates: int) -> int:
  """Threads that compile the K candidates' steps ahead (`StepPerK`): none on 'cpu' (a
  2-core host gains little and would hold several compilers' memory), else one per
  candidate up to a quarter of the host's cores."""
  if platform == "cpu":
    return 0
  return max(1, min(num_candidates, (os.cpu_count() or 4) // 4))


def load_frozen(config) -> tuple[Frozen, Frozen]:
  """(graphdefs, states) of the frozen networks that are switched on."""
  lo = config.loss
  graphdefs, states = {}, {}
  if lo.lpips_path and lo.lpips_weight:
    from mergevq_jax.nets.vgg_lpips import load_lpips
    graphdefs["lpips"], states["lpips"] = nnx.split(load_lpips(lo.lpips_path))
  if lo.teacher_path and lo.align_weight:
    from mergevq_jax.nets.dinov2 import load_dinov2
    graphdefs["teacher"], states["teacher"] = nnx.split(
        load_dinov2(lo.teacher_path, image_size=config.data.align_size))
  return Frozen(**graphdefs), Frozen(**states)


class TokenizerStage(loop.Stage):
  """The tokenizer + discriminator train state, K sampled per step, fixed-batch evals."""

  layout = TOKENIZER_LAYOUT

  def __init__(self, config):
    super().__init__(config)
    check_train_config(config, self.mesh)
    from mergevq_jax.data.pipeline import make_eval_batch, make_train_dataset
    self.graphs = make_graphs(config)
    self.frozen_graphs, self.frozen = load_frozen(config)
    if self.frozen.teacher is not None and not config.data.align_views:
      raise ValueError("the alignment loss needs data.align_views=True (weak/strong views)")
    self.train_data = make_train_dataset(config, seed=config.seed)
    # The fixed eval batch and its reconstructions are replicated: every process holds
    # them whole (images, PSNR and codebook statistics need no cross-host gather).
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.eval_images = jax.device_put(make_eval_batch(config, config.data.eval_images),
                                      replicated)
    candidates = sorted(set(config.model.keep_candidates)) or [config.model.num_keep]
    self.eval_keeps = sorted({min(candidates), config.model.num_keep})
    tok_graph = self.graphs.tokenizer
    self.recon_fn = jax.jit(
        lambda p, x, num_keep: nnx.merge(tok_graph, p).reconstruct(x, num_keep),
        static_argnames=("num_keep",), out_shardings=replicated)
    self.keeps_used: set[int] = set()
    self.num_keep = None
    self.first_eval = self.last_eval = None
    self.heldout, self.last_heldout = None, {}
    if config.eval.num_images:
      self.heldout = self._heldout_setup(config)

  def _heldout_setup(self, config):
    """The held-out evaluation's networks (loaded once), images and jitted reconstruction."""
    from mergevq_jax.data.sources import source_from_config
    from mergevq_jax.eval.feature_nets import FeatureNets
    nets = FeatureNets(self.mesh, inception=config.eval.inception, lpips=config.eval.lpips)
    source = source_from_config(config, train=False)
    recovered = bool(config.model.recovery.enabled)
    return {"nets": nets, "source": source, "num_images": min(config.eval.num_images,
                                                              len(source)),
            "recon": reconstruct_fn(self.graphs.tokenizer, recovered),
            "sources": ("gt", "recovered") if recovered else ("gt",)}

  def run_heldout(self, state) -> dict:
    """rFID / PSNR / SSIM / LPIPS per K (EMA weights) on the held-out images."""
    h, m = self.heldout, self.config.model
    per_k = evaluate_set(
        h["recon"], state.ema, h["nets"], h["source"], h["num_images"], self.eval_keeps,
        image_size=int(m.image_size),
        batch=batches.local_batch_size(self.mesh, self.config.eval.batch_size),
        code_bits=int(m.z_channels), sources=h["sources"])
    out = {}
    for k, row in per_k.items():
      for name in ("rfid", "psnr", "ssim", "lpips"):
        if name in row:
          out[f"heldout_{name}_k{k}"] = row[name]
        if name in row.get("recovered", {}):
          out[f"heldout_recovered_{name}_k{k}"] = row["recovered"][name]
    return out

  def create_state(self):
    return create_state(self.config, self.mesh, self.rules)

  def abstract_state(self):
    return abstract_state(self.config)

  def make_step(self, shardings, batch_sharding):
    frozen_shardings = sharding.state_shardings(self.frozen, self.mesh, self.rules)
    frozen = jax.device_put(self.frozen, frozen_shardings)
    candidates = self.config.model.keep_candidates or (self.config.model.num_keep,)
    self.step_fn = StepPerK(jit_train_step(
        make_train_step(self.config, self.graphs, self.frozen_graphs), shardings,
        batch_sharding, frozen_shardings, self.mesh), candidates,
        compile_workers(self.config.platform, len(candidates)))
    host_memory.release_free_memory()  # initialisation / restore scratch

    def step(state, batch, index):
      self.num_keep = sample_num_keep(self.config, index)
      self.keeps_used.add(self.num_keep)
      return self.step_fn(state, batch, frozen, self.num_keep)
    return step

  def device_batch(self, batch, batch_sharding):
    return super().device_batch({k: v for k, v in batch.items() if k != "label"},
                                batch_sharding)

  def log_extras(self):
    return {"train/num_keep": self.num_keep, "train/compiled_k": self.step_fn.num_compiled}

  def on_log(self, metrics):
    return dict(loss=f"{metrics['g_total']:.3f}", psnr=f"{metrics['psnr']:.2f}",
                K=self.num_keep)

  def run_eval(self, state, step, logger, final: bool = False):
    keeps, images = self.eval_keeps, self.eval_images
    every = self.config.eval.every
    heldout_now = self.heldout is not None and (final or (every and step % every == 0))
    with sharding.use_mesh(self.mesh, self.rules):
      res = evaluate(self.recon_fn, state.params, images, keeps)
      ema = evaluate(self.recon_fn, state.ema, images, keeps[-1:])
      heldout = self.run_heldout(state) if heldout_now else {}
    scalars = {k: v for k, v in res.items() if k != "recon"}
    scalars[f"ema_psnr_k{keeps[-1]}"] = ema[f"psnr_k{keeps[-1]}"]
    scalars.update(heldout)
    if heldout:
      self.last_heldout = heldout
    logger.scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
    rows = [to_uint8(images)] + [to_uint8(res["recon"][k]) for k in keeps]
    logger.image(step, "reconstructions", image_grid(rows, ["original"] + [f"K={k}" for k in keeps]))
    self.first_eval = self.first_eval or scalars
    self.last_eval = scalars

  def begin(self, state, start, logger):
    if start == 0:
      self.run_eval(state, 0, logger)

  def periodic(self, state, step, logger):
    if step % self.config.train.eval_every == 0:
      self.run_eval(state, step, logger)

  def finish(self, state, step, logger):
    self.run_eval(state, step, logger, final=True)

  def checkpoint_meta(self):
    return {"num_keep_values": sorted(self.keeps_used)}

  def summary(self, state, step: int, workdir: str):
    k, first, last = self.eval_keeps[-1], self.first_eval, self.last_eval
    return {
        "psnr_first_eval": None if first is None else first[f"psnr_k{k}"],
        "psnr_last_eval": last[f"psnr_k{k}"] if last else None,
        "psnr_last_eval_per_k": {kk: last[f"psnr_k{kk}"] for kk in self.eval_keeps}
        if last else None,
        "ema_psnr_last_eval": last.get(f"ema_psnr_k{k}") if last else None,
        "codebook_usage": last["codebook_usage"] if last else None,
        "codes_seen": last["codes_seen"] if last else None,
        "perplexity": last["perplexity"] if last else None,
        "num_keep_values": sorted(self.keeps_used),
        "compiled_steps": self.step_fn.num_compiled,
        **self.heldout_summary(),
    }

  def heldout_summary(self) -> dict:
    """The last held-out evaluation's numbers, with N and the small-N caveat."""
    if self.heldout is None:
      return {}
    from mergevq_jax.eval import fid
    h = self.heldout
    n = h["num_images"]
    values = {k[len("heldout_"):]: v for k, v in self.last_heldout.items()}
    caveats = (fid.check_sample_size(n, fid.FEATURE_DIM, warn=False)
               if h["nets"].has_inception else [])
    return {"heldout": {"num_images": n, "weights": "ema",
                        "split": "the eval split's eval views (centre crops)",
                        "nets": h["nets"].describe(), **values,
                        "note": "; ".join(caveats) or None}}


def train(config, workdir: str, stop_at: int | None = None) -> dict:
  """Train (or resume) until train.steps, or until `stop_at` steps for a time-boxed run
  (checkpointed like a preemption; run again to continue)."""
  return loop.run(TokenizerStage, config, workdir, stop_at)
