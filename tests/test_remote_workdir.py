"""Run directories, codes and data in an object store: with `gs://` paths every file goes
through etils.epath, never `open` / `os.*` on the URI, and never a local folder named 'gs:'.

The store is a test double for gcsfs: epath's fsspec backend (what a TPU VM without
TensorFlow uses for gs://) is handed an in-memory fsspec filesystem that, like an object
store, cannot append. Orbax's arrays go through tensorstore, which speaks gs:// itself and
cannot be pointed at the double: the trainer test diverts only the checkpoint folder to
local disk.
"""
import builtins
import json
import os
import time

import ml_collections
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from mergevq_jax import files, run_dir
from mergevq_jax.data import codes as codes_lib
from mergevq_jax.data import sources
from mergevq_jax.train.logger import Logger

RUN = "gs://bucket/run"


class ObjectStore(MemoryFileSystem):
  """gcsfs stand-in: whole objects in memory, no appends or in-place updates."""

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode or "+" in mode:
      raise NotImplementedError(f"an object store cannot open {path} with mode {mode!r}")
    return super()._open(path, mode, **kwargs)


def _is_uri(arg) -> bool:
  try:
    return os.fspath(arg).startswith(("gs:", b"gs:"))
  except TypeError:
    return False


@pytest.fixture
def store(monkeypatch, tmp_path):
  """The in-memory gs:// store; any local file call on a gs:// path fails the test."""
  fs = ObjectStore(skip_instance_cache=True)
  fs.store, fs.pseudo_dirs = {}, [""]
  monkeypatch.setattr(epath_backend.fsspec_backend, "_get_filesystem", lambda name: fs)
  for module, name in [(builtins, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                       (os, "makedirs"), (os, "mkdir"), (os, "replace"), (os, "rename"),
                       (os, "remove"), (os, "unlink"), (os, "listdir"), (os, "scandir")]:
    real = getattr(module, name)

    def guarded(path, *args, _real=real, _name=name, **kwargs):
      assert not _is_uri(path), f"{_name}({path!r}): a local file call on an object-store path"
      return _real(path, *args, **kwargs)
    monkeypatch.setattr(module, name, guarded)
  monkeypatch.chdir(tmp_path)
  yield fs
  assert not any(p.name.startswith("gs") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def objects(fs, prefix=RUN) -> set[str]:
  """Names of the objects under a prefix, relative to it."""
  return {k[len(prefix) + 1:] for k in fs.store if k.startswith(prefix + "/")}


def test_run_directory_files_in_an_object_store(store, capsys, monkeypatch):
  cfg = ml_collections.ConfigDict({"stage": "tokenizer", "model": {"ch": 32},
                                           "train": {"steps": 10, "lr": 1e-3}})
  run_dir.check_workdir(RUN)
  run_dir.record_start(RUN, cfg, 0, resumed=False)
  cfg.train.steps = 20
  assert run_dir.check_resumable(RUN, cfg, 10) == {"train.steps": [10, 20]}
  run_dir.record_start(RUN, cfg, 10, resumed=True)            # appended, object rewritten
  assert [h["event"] for h in run_dir.read_history(RUN)] == ["start", "resume"]
  assert run_dir.load_config(RUN).train.steps == 20
  assert json.loads(files.read_text(f"{RUN}/config.json"))["train"]["steps"] == 10
  cfg.model.ch = 64
  with pytest.raises(ValueError, match=r"model.ch=32 in the run, 64 requested"):
    run_dir.check_resumable(RUN, cfg, 10)
  files.write_text(f"{RUN}/afile", "x")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    run_dir.check_workdir(f"{RUN}/afile")

  # Logs: metrics.jsonl and the TensorBoard events are uploaded at close; a resume drops
  # what was logged after its step.
  logger = Logger(RUN)
  for step in (1, 2, 3):
    logger.scalars(step, {"train/loss": 1.0 / step})
  png = logger.image(3, "reconstructions", np.zeros((8, 8, 3), np.uint8))
  logger.close()
  assert png == f"{RUN}/reconstructions.png"
  assert files.path(png).read_bytes()[:4] == b"\x89PNG"
  assert any(n.startswith("tensorboard/events.out.tfevents") for n in objects(store))
  logger = Logger(RUN, start_step=2)
  logger.close()
  steps = [json.loads(line)["step"] for line in files.read_text(f"{RUN}/metrics.jsonl").splitlines()]
  assert steps == [1, 2]


def test_the_run_lock_is_a_lease_in_an_object_store(store, capsys, monkeypatch):
  monkeypatch.setattr(run_dir.RunLock, "LEASE_SETTLE_S", 0.01)
  monkeypatch.setattr(run_dir.RunLock, "LEASE_RENEW_S", 0.05)
  lock = f"{RUN}/lock"
  with run_dir.RunLock(RUN):
    first = json.loads(files.read_text(lock))
    assert first["pid"] == os.getpid()
    time.sleep(0.3)
    assert json.loads(files.read_text(lock))["renewed"] > first["renewed"]   # heartbeat
  assert files.read_text(lock) == ""                                          # released
  # A live holder elsewhere (renewed just now) is refused, naming it ...
  other = {"pid": 4242, "host": "tpu-vm-7", "started": "2026-11-28T10:00:00+00:00",
           "command": "python -m mergevq_jax.main", "token": "x", "renewed": time.time()}
  files.write_text(lock, json.dumps(other))
  with pytest.raises(run_dir.RunInUse, match=r"in use by pid 4242 on host tpu-vm-7 .*lease "
                                             r"renewed \d+ s ago"):
    with run_dir.RunLock(RUN):
      pass
  # ... one that stopped renewing is dead: taken over with a warning.
  files.write_text(lock, json.dumps({**other, "renewed": time.time() - 1000}))
  with run_dir.RunLock(RUN):
    assert json.loads(files.read_text(lock))["pid"] == os.getpid()
  assert "taking over the lock of pid 4242 on host tpu-vm-7" in capsys.readouterr().err


def test_codes_and_image_folders_in_an_object_store(store, tmp_path):
  codes = f"{RUN}/codes"
  rng = np.random.default_rng(0)
  for p in range(2):
    n = 3 + p
    codes_lib.write_shard(codes, p, 2, rng.integers(0, 100, (n, 16)), np.full(n, 4),
                          np.arange(n), np.arange(p, 2 * n, 2)[:n])
  codes_lib.write_manifest(codes, {"num_positions": 16})
  ds = codes_lib.CodeDataset(codes)
  assert len(ds) == 7 and ds.column("keep").tolist() == [4] * 7
  assert ds[0]["codes"].shape == (16,)

  # The same tree of images locally and in the store: the same paths, labels and pixels.
  from PIL import Image
  local = tmp_path / "photos"
  for cls, count in (("cat", 2), ("dog", 1)):
    (local / "train" / cls).mkdir(parents=True)
    for i in range(count):
      image = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
      image.save(local / "train" / cls / f"{i}.png")
      files.copy(str(local / "train" / cls / f"{i}.png"), f"gs://bucket/photos/train/{cls}/{i}.png")
  files.write_text("gs://bucket/photos/train/dog/.hidden.png", "")
  a, b = sources.ImageFolder(str(local)), sources.ImageFolder("gs://bucket/photos")
  assert a.classes == b.classes == ["cat", "dog"] and len(a) == len(b) == 3
  assert [p[len(str(local)):] for p in a.paths] == [p[len("gs://bucket/photos"):] for p in b.paths]
  for i in range(3):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"] == b[i]["label"]
