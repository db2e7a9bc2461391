"""Stage 2: tokenize job -> code dataset -> MergeAR trainer (learning, resume, checks) ->
sampling CLI. The tokenizer run is a checkpoint of an untrained tiny tokenizer (what is
tested here is the plumbing, not image quality; the demo trains a real one)."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mergevq_jax import pretrained, sharding
from mergevq_jax.data import codes as codes_lib
from mergevq_jax.data.sources import SampleImages
from mergevq_jax.models.tokenizer import jit_method
from mergevq_jax.data.tokenize_images import expand_codes, tokenize_dataset
from mergevq_jax.train import ar_state, ar_step, ar_trainer
from mergevq_jax.checkpoint import MERGEAR_LAYOUT, Checkpointer
from mergevq_jax import run_dir
from mergevq_jax.run_dir import save_config
from mergevq_jax.train.tokenizer_state import create_state

from mergevq_jax.config import load_config_file

from conftest import ROOT, load_config

KEEPS = (25, 36)


def tiny_tokenizer_config(**model):
  cfg = load_config("tokenizer_tiny")
  cfg.disc.enabled = False
  cfg.model.update(model)
  return cfg


def save_tokenizer_checkpoint(workdir: str, step: int, cfg=None) -> None:
  """config.json + a freshly initialised tiny tokenizer's checkpoint at `step`."""
  cfg = cfg or tiny_tokenizer_config()
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state, _ = create_state(cfg, mesh, sharding.DEFAULT_RULES)
  save_config(workdir, cfg)
  ckpt = Checkpointer(workdir, keep=2)
  ckpt.save(step, state)
  ckpt.close()


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
  """A stage-1 run directory: config.json + a checkpoint at step 0."""
  workdir = str(tmp_path_factory.mktemp("tok"))
  save_tokenizer_checkpoint(workdir, 0)
  return workdir


@pytest.fixture(scope="module")
def codes_dir(tokenizer_run, tmp_path_factory):
  tokenizer, _, _ = pretrained.load_tokenizer(tokenizer_run)
  out = str(tmp_path_factory.mktemp("codes"))
  tokenize_dataset(tokenizer, SampleImages(), out, KEEPS, views=2, batch_size=16,
                   extra_manifest={"tokenizer_workdir": tokenizer_run}, progress=False)
  return out


def test_tokenized_codes_are_the_expanded_encoding(tokenizer_run, codes_dir):
  ds = codes_lib.CodeDataset(codes_dir)
  n_images = len(SampleImages())
  assert len(ds) == 2 * n_images
  man = ds.manifest
  assert man["grid"] == [8, 8] and man["num_positions"] == 64 and man["code_bits"] == 18
  assert man["num_classes"] == n_images
  keep = ds.column("keep")
  assert set(keep.tolist()) == set(KEEPS)            # both K values are used
  for i in range(len(ds)):                            # at most K distinct codes per image
    assert len(set(ds[i]["codes"].tolist())) <= ds[i]["keep"]
  # The first view is the center crop: the codes equal the tokenizer's expanded encoding.
  from mergevq_jax.data.augment import eval_view
  tokenizer, _, _ = pretrained.load_tokenizer(tokenizer_run)
  item = next(ds[i] for i in range(len(ds)) if ds[i]["label"] == 0)
  image = eval_view(SampleImages()[0]["image"], 64)[None]
  graphdef, state = nnx.split(tokenizer)
  enc = jit_method(graphdef, "encode")(state, jnp.asarray(image), num_keep=item["keep"])
  np.testing.assert_array_equal(expand_codes(enc.indices, enc.owner)[0], item["codes"])


def test_codes_dataset_is_the_same_whatever_the_number_of_processes(tokenizer_run, tmp_path):
  """Each process tokenizes its own images into its own shard; read back, the dataset's rows
  are in the same order as one process's (so MergeAR draws the same batches)."""
  tokenizer, _, _ = pretrained.load_tokenizer(tokenizer_run)
  for count in (1, 2):
    for p in range(count):
      tokenize_dataset(tokenizer, SampleImages(), str(tmp_path / str(count)), KEEPS, views=2,
                       batch_size=4, process_index=p, process_count=count, progress=False)
  one, two = (codes_lib.CodeDataset(str(tmp_path / str(c))) for c in (1, 2))
  assert len(one) == len(two) == 2 * len(SampleImages())
  for name in ("codes", "keep", "label"):
    np.testing.assert_array_equal(one.column(name), two.column(name))
  for i in (0, 5, len(one) - 1):
    for key in ("codes", "keep", "label"):
      np.testing.assert_array_equal(one[i][key], two[i][key])


def test_expand_codes_follows_the_owner():
  indices = jnp.array([[7, 9, 11]])
  owner = jnp.array([[0, 0, 2, 1, 2]])
  np.testing.assert_array_equal(expand_codes(indices, owner), [[7, 7, 11, 9, 11]])


def ar_config(codes_dir, **train):
  c = load_config("mergear_tiny")
  c.model.width, c.model.num_layers, c.model.num_heads, c.model.ffn_dim = 64, 2, 2, 128
  c.data.codes_dir = codes_dir
  c.train.update(dict(batch_size=8, steps=6, log_every=1, sample_every=0,
                      ckpt_every=10 ** 6, warmup_steps=2, ema_decay=0.9))
  c.train.update(train)
  return c


def final_state(workdir, cfg):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  abstract = ar_state.abstract_state(cfg)
  ckpt = Checkpointer(workdir, keep=3, layout=MERGEAR_LAYOUT)
  state, _ = ckpt.restore(abstract, sharding.state_shardings(abstract, mesh,
                                                             sharding.DEFAULT_RULES))
  ckpt.close()
  return state


def test_ar_training_learns_and_resumes_exactly(codes_dir, tmp_path):
  cfg = ar_config(codes_dir, steps=24, lr=3e-3)
  straight = ar_trainer.train(cfg, str(tmp_path / "straight"))
  assert straight["steps"] == 24 and straight["skipped_steps"] == 0
  assert straight["loss_last_log"] < straight["loss_first_log"] - 1.0   # nats per position
  last = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
  assert {"train/ce_0", "train/ce_1", "train/acc", "train/lr"} <= set(last)
  # Resume: 2N steps == N steps + restart + N steps (parameters, optimizer, EMA, data).
  ar_trainer.train(cfg, str(tmp_path / "split"), stop_at=12)
  second = ar_trainer.train(cfg, str(tmp_path / "split"))
  assert second["start_step"] == 12 and second["steps"] == 24
  a, b = final_state(str(tmp_path / "straight"), cfg), final_state(str(tmp_path / "split"), cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  # Each step logged once, although the first attempt's last steps were logged past 12.
  steps = [json.loads(line)["step"] for line in
           (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
  assert [s for s in steps if s <= 24] == sorted(set(steps))
  # A finished run refuses another architecture and a train state that does not fit, and
  # neither attempt touches config.json or config_history.jsonl.
  split = tmp_path / "split"
  before = {f: (split / f).read_bytes() for f in ("config.json", "config_history.jsonl")}
  wider = ar_config(codes_dir, steps=30, lr=3e-3)
  wider.model.width = 128
  with pytest.raises(ValueError, match="another architecture: model.width=64 in the run, "
                                       "128 requested"):
    ar_trainer.train(wider, str(split))
  unclipped = ar_config(codes_dir, steps=30, lr=3e-3, grad_clip=0.0)  # another optimizer state
  with pytest.raises(ValueError, match=r"does not fit this config's train state.*"
                                       r"'train.grad_clip'"):
    ar_trainer.train(unclipped, str(split))
  assert before == {f: (split / f).read_bytes() for f in before}
  assert [e["event"] for e in run_dir.read_history(str(split))] == ["start", "resume"]


def test_divergence_stops_and_names_the_last_checkpoint(codes_dir, tmp_path):
  # lr=1e30: every weight is ~1e30 after one step; the loss stays finite (~1e31) but the
  # gradient norm overflows, so the steps are skipped and the run stops.
  cfg = ar_config(codes_dir, steps=40, lr=1e30, warmup_steps=0, nan_patience=3,
                  ckpt_every=1)
  with pytest.raises(FloatingPointError, match=r"diverged: steps 2\.\.4 .* the latest "
                                               r"checkpoint \(step 3\) holds the weights of step 1"):
    ar_trainer.train(cfg, str(tmp_path / "run"))
  cfg = ar_config(codes_dir, steps=40, lr=float("inf"), warmup_steps=0, nan_patience=3)
  with pytest.raises(FloatingPointError, match="no checkpoint was written before them"):
    ar_trainer.train(cfg, str(tmp_path / "inf"))


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.model, "keep_values", (25, 49)), r"K=\[36\]"),
    (lambda c: setattr(c.model, "num_classes", 3), "model.num_classes=3"),
    (lambda c: setattr(c.model, "grid", (16, 4)), "code grid"),
    (lambda c: setattr(c.data, "codes_dir", "/nonexistent"), "manifest.json"),
    (lambda c: setattr(c.train, "batch_size", 7) if jax.device_count() > 1 else
     setattr(c.train, "steps", 0), "train"),
])
def test_ar_trainer_rejects_bad_setups(codes_dir, tmp_path, change, match):
  cfg = ar_config(codes_dir)
  change(cfg)
  with pytest.raises(ValueError, match=match):
    ar_trainer.train(cfg, str(tmp_path))


def test_class_dropout_uses_the_null_class():
  labels = jnp.arange(4000, dtype=jnp.int32) % 7
  dropped = ar_step.drop_labels(labels, jnp.int32(3), 0.1, 7, seed=0)
  changed = np.asarray(dropped != labels)
  assert 0.08 < changed.mean() < 0.12                       # rate 0.1
  assert set(np.asarray(dropped)[changed].tolist()) == {7}   # replaced by the null class
  np.testing.assert_array_equal(dropped, ar_step.drop_labels(labels, jnp.int32(3), 0.1, 7, 0))
  assert not np.array_equal(dropped, ar_step.drop_labels(labels, jnp.int32(4), 0.1, 7, 0))


def test_sample_cli_writes_grid_and_stats(codes_dir, tokenizer_run, tmp_path):
  cfg = ar_config(codes_dir, steps=2, sample_every=2)
  summary = ar_trainer.train(cfg, str(tmp_path / "ar"))
  assert (tmp_path / "ar" / "samples.png").is_file()
  assert summary["sample/kept_slots_used"] > 0
  out = subprocess.run(
      [sys.executable, "-m", "mergevq_jax.sample", f"--ar_workdir={tmp_path / 'ar'}",
       "--classes=0,3", "--per_class=2", "--cfg=2.0", "--top_k=50", "--num_keep=36",
       f"--out={tmp_path / 'new' / 'grid.png'}"], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stderr.strip() == ""           # no orbax/absl INFO lines (26-48 before)
  from PIL import Image
  assert Image.open(tmp_path / "new" / "grid.png").size[0] > 2 * 64   # folder created
  report = json.loads((tmp_path / "new" / "grid.json").read_text())
  assert len(report["samples"]) == 4 and report["cfg"] == 2.0 and report["num_keep"] == 36
  for s in report["samples"]:
    assert 1 <= s["kept_slots_used"] <= 36 and s["distinct_codes"] >= s["kept_slots_used"]


def test_loading_weights_needs_no_training_code(tokenizer_run):
  """pretrained.load_tokenizer reads the EMA item alone: nothing under mergevq_jax.train
  is imported (evaluation, export and notebooks load runs this way)."""
  code = (f"from mergevq_jax import pretrained; import sys\n"
          f"model, cfg, step = pretrained.load_tokenizer({tokenizer_run!r})\n"
          f"assert step == 0 and model.num_tokens == 64\n"
          f"print(sorted(m for m in sys.modules if m.startswith('mergevq_jax.train')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tokenize_cli_checks_its_output_first_and_shows_progress(tokenizer_run, tmp_path):
  def tokenize(out, *flags):
    return subprocess.run([sys.executable, "-m", "mergevq_jax.tokenize",
                           f"--tokenizer_workdir={tokenizer_run}", f"--out={out}",
                           "--keep_values=25", "--batch_size=16", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  out = tokenize(tmp_path / "new" / "codes")
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()               # progress only: no INFO logs
  assert lines and all(line.startswith("tokenize: image ") for line in lines), lines
  assert lines[-1].startswith("tokenize: image 11/11 (100.0%)") and "took" in lines[-1]
  assert codes_lib.CodeDataset(str(tmp_path / "new" / "codes")).manifest["keep_values"] == [25]
  for target, message in ((tmp_path / "new" / "codes", "already holds a codes dataset; pass "
                           "--overwrite"), (tokenizer_run, "is a run directory")):
    out = tokenize(target)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        out.stderr.strip()] and message in out.stderr, out.stderr


def test_stage2_reuses_codes_of_the_same_tokenizer_step_and_never_a_stale_mergear(tmp_path):
  """The main job's stage 2: codes are remade when the tokenizer moved on, and a MergeAR run
  trained on older codes is set aside (renamed), never resumed; a MergeAR trainer given
  codes of another tokenizer step refuses to resume."""
  from mergevq_jax import stage2
  workdir = tmp_path / "tok"
  cfg = tiny_tokenizer_config(keep_candidates=(36,), keep_probs=(1.0,))   # one K: one compile
  save_tokenizer_checkpoint(str(workdir), 0, cfg)
  ar_file = tmp_path / "mergear_small.py"   # ar_config()'s model, no sample grids
  ar_file.write_text(
      "from mergevq_jax.config import load_config_file\n"
      "def get_config(platform=None):\n"
      f"  c = load_config_file({str(ROOT / 'configs' / 'mergear_tiny.py')!r}, platform)\n"
      "  c.model.width, c.model.num_layers, c.model.num_heads, c.model.ffn_dim = 64, 2, 2, 128\n"
      "  c.train.batch_size, c.train.sample_every = 8, 0\n"
      "  return c\n")
  cfg.stage2.mergear_config = str(ar_file)
  cfg.stage2.steps, cfg.stage2.views = 1, 1
  first = stage2.run_stage2(cfg, str(workdir))
  assert first["steps"] == 1
  manifest = workdir / "codes" / "manifest.json"
  assert json.loads(manifest.read_text())["tokenizer_step"] == 0
  made = manifest.stat().st_mtime_ns
  stage2.run_stage2(cfg, str(workdir))                      # nothing changed: reused
  assert manifest.stat().st_mtime_ns == made
  # The tokenizer trains on (a checkpoint of step 5 appears): new codes, new MergeAR.
  save_tokenizer_checkpoint(str(workdir), 5, cfg)
  stage2.run_stage2(cfg, str(workdir))
  assert json.loads(manifest.read_text())["tokenizer_step"] == 5
  assert (tmp_path / "tok" / "mergear.tokenizer_step_0" / "checkpoints" / "1").is_dir()
  ckpt = Checkpointer(str(workdir / "mergear"), keep=1, layout=MERGEAR_LAYOUT)
  assert ckpt.step_and_meta()[1]["codes_tokenizer_step"] == 5
  ckpt.close()
  # The trainer itself: a run made from step-0 codes does not resume on step-5 codes.
  ar_cfg = load_config_file(str(ar_file))
  ar_cfg.train.steps, ar_cfg.data.codes_dir = 2, str(workdir / "codes")
  with pytest.raises(ValueError, match="trained on codes of tokenizer step 0; the codes in "
                                       ".* come from step 5"):
    ar_trainer.train(ar_cfg, str(workdir / "mergear.tokenizer_step_0"))
