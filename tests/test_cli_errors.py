"""Every mistake a new user made on the command line ends in one `error:` line naming the
flag, key or file (exit 2), never a traceback, and before any work is done."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TRAIN = ["-m", "mergevq_jax.main", "--config=configs/demo_cpu.py"]
CONVERT = ["-m", "mergevq_jax.nets.convert", "dinov2"]
SAMPLE = ["-m", "mergevq_jax.sample", "--ar_workdir=/nonexistent/run"]
TOKENIZE = ["-m", "mergevq_jax.tokenize", "--tokenizer_workdir=/nonexistent/run"]


def files(tmp):
  (tmp / "a_file").write_text("x")
  (tmp / "corrupt").mkdir()
  for i in range(3):
    (tmp / "corrupt" / f"{i}.jpg").write_bytes(b"not a jpeg")
  (tmp / "bad.npz").write_text("not an npz")
  (tmp / "model.pth").write_bytes(b"not a checkpoint")
  return tmp


# (name, arguments given tmp, text the error line contains)
CASES = [
    ("workdir is a file", lambda t: TRAIN + [f"--workdir={t}/a_file"],
     "a_file is a file, not a directory"),
    ("config file missing", lambda t: ["-m", "mergevq_jax.main", "--config=configs/nope.py",
                                       f"--workdir={t}/run"],
     "config file 'configs/nope.py' not found"),
    ("platform typo", lambda t: ["-m", "mergevq_jax.main", "--config=configs/demo_cpu.py:gpux",
                                 f"--workdir={t}/run"],
     "--config=configs/demo_cpu.py:gpux: platform must be one of ('cpu', 'gpu', 'tpu'), "
     "got 'gpux'"),
    ("tuple key given a word", lambda t: TRAIN + [f"--workdir={t}/run",
                                                  "--config.model.ch_mult=abc"],
     "model.ch_mult must be a tuple of integers such as (1, 1, 2, 4, 8), got ('abc',)"),
    ("integer key given 1.5", lambda t: TRAIN + [f"--workdir={t}/run",
                                                 "--config.train.accum_steps=1.5"],
     "--config.train.accum_steps=1.5: invalid literal for int()"),
    ("accum_steps=0", lambda t: TRAIN + [f"--workdir={t}/run", "--config.train.accum_steps=0"],
     "train.accum_steps must be >= 1, got 0"),
    ("crop_scale=5", lambda t: TRAIN + [f"--workdir={t}/run", "--config.data.crop_scale=5"],
     "data.crop_scale must be a pair (min, max)"),
    ("all images corrupt", lambda t: TRAIN + [f"--workdir={t}/run", "--config.data.source=folder",
                                              f"--config.data.path={t}/corrupt"],
     "none of its 3 items could be decoded"),
    ("misspelled section", lambda t: TRAIN + [f"--workdir={t}/run", "--config.trian.steps=3"],
     "--config.trian.steps: the config has no key 'trian' (did you mean 'train'?); every key "
     "is in mergevq_jax/config/tokenizer.py:tokenizer_defaults"),
    ("unknown MergeAR key", lambda t: ["-m", "mergevq_jax.main",
                                       "--config=configs/mergear_tiny.py", f"--workdir={t}/run",
                                       "--config.model.foo=1"],
     "model has no key 'foo'; every key is in mergevq_jax/config/mergear.py:mergear_defaults"),
    ("npz that is not one", lambda t: TRAIN + [f"--workdir={t}/run",
                                               f"--config.loss.lpips_path={t}/bad.npz"],
     "bad.npz: not an .npz file (an .npz is a zip of .npy arrays"),
    ("convert: missing input", lambda t: CONVERT + ["--in", f"{t}/none.safetensors", "--out",
                                                    f"{t}/o.npz"],
     "weight file not found"),
    ("convert: output is a directory", lambda t: CONVERT + ["--in", f"{t}/bad.npz", "--out",
                                                            str(t)],
     "is a directory; give a file name ending in .npz"),
    ("convert: output under a file", lambda t: CONVERT + ["--in", f"{t}/bad.npz", "--out",
                                                          f"{t}/a_file/o.npz"],
     "a_file is a file, not a directory"),
    ("sample: per_class=0", lambda t: SAMPLE + ["--per_class=0"], "--per_class must be >= 1"),
    ("sample: bad class ids", lambda t: SAMPLE + ["--classes=cat,dog"],
     "--classes must be comma-separated class ids, got 'cat,dog'"),
    ("sample: output is a directory", lambda t: SAMPLE + [f"--out={t}"],
     "is a directory; give a file name ending in .png"),
    ("sample: output under a file", lambda t: SAMPLE + [f"--out={t}/a_file/grid.png"],
     "a_file is a file, not a directory"),
    ("tokenize: output is a file", lambda t: TOKENIZE + [f"--out={t}/a_file"],
     "a_file is a file, not a directory"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return files(tmp_path_factory.mktemp("cli"))


def one_line_error(args, env=None):
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
  lines = [line for line in out.stderr.strip().splitlines()
           if not line.startswith("W")]   # absl warnings (e.g. each skipped image) may stay
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith("error: ")
  return lines[0]


@pytest.mark.parametrize("name, make_args, message", CASES, ids=[c[0] for c in CASES])
def test_one_line_error(tmp, name, make_args, message):
  assert message in one_line_error(make_args(tmp))


def test_missing_torch_names_the_pip_command(tmp):
  """PyTorch is in the test extra: its absence is simulated by a `torch` that cannot be
  imported, first on the path."""
  (tmp / "no_torch").mkdir(exist_ok=True)
  (tmp / "no_torch" / "torch.py").write_text("raise ImportError(\"No module named 'torch'\")")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(tmp / "no_torch"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
  line = one_line_error(CONVERT + ["--in", f"{tmp}/model.pth", "--out", f"{tmp}/o.npz"], env)
  assert "needs PyTorch: pip install torch==2.13.0" in line


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow-datasets installed")
def test_missing_tfds_names_the_pip_command(tmp):
  line = one_line_error(TRAIN + [f"--workdir={tmp}/run", "--config.data.source=tfds",
                                 f"--config.data.path={tmp}"])
  assert "pip install 'mergevq_jax[tfds]'" in line
