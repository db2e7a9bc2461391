"""Data pipeline: sources (sample photos, image folders, tfds ArrayRecord), views, grain
iterators (determinism, resume, per-process shards, workers), errors."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config
from mergevq_jax.data import augment, pipeline, sources
from mergevq_jax.data import (ImageFolder, SampleImages, TfdsSource, make_eval_batch,
                              make_train_iterator)

MEAN, STD = augment.IMAGENET_MEAN, augment.IMAGENET_STD


def _config(batch=4, **data):
  config = load_config("tokenizer_tiny")      # image_size 64
  config.train.batch_size = batch
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(batches_a, batches_b):
  return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
             for a, b in zip(batches_a, batches_b))


@pytest.fixture(scope="module")
def samples():
  return SampleImages()


# ------------------------------------------------------------------------- sample photos

def test_sample_images_are_real_offline_photos(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  src = SampleImages()
  assert len(src) >= 8, (src.names, src.excluded)
  assert "astronaut" in src.names and "china" in src.names
  assert "cat" in src.excluded                      # duplicate of chelsea, not counted twice
  shapes, means = set(), []
  for i in range(len(src)):
    item = src[i]
    image = item["image"]
    assert item["label"] == i
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert min(image.shape[:2]) >= 256
    assert image.std() > 20, src.names[i]           # a photo, not a constant placeholder
    shapes.add(image.shape)
    means.append(image.mean(axis=(0, 1)))
  assert len(shapes) >= 5
  assert len({tuple(np.round(m, 1)) for m in means}) == len(src)   # all distinct pictures
  # Same pixels as the packages' own loaders (read offline from the installed files).
  import skimage.data
  from sklearn.datasets import load_sample_image
  np.testing.assert_array_equal(src[src.names.index("astronaut")]["image"],
                                skimage.data.astronaut())
  np.testing.assert_array_equal(src[src.names.index("china")]["image"],
                                load_sample_image("china.jpg"))


# --------------------------------------------------------------------------------- views

def test_views_ranges_and_normalisation():
  rng = np.random.default_rng(0)
  photo = SampleImages()[0]["image"]
  main = augment.main_view(photo, rng, 64, (0.8, 1.0))
  strong = augment.strong_view(photo, rng, 48, (0.08, 1.0))
  weak = augment.weak_view(photo, rng, 48)
  ev = augment.eval_view(photo, 64)
  assert main.shape == ev.shape == (64, 64, 3) and weak.shape == strong.shape == (48, 48, 3)
  for x in (main, strong, weak, ev):
    assert x.dtype == np.float32
  for x in (main, strong, ev):
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() - x.min() > 1.0
  # weak = (x/255 - mean)/std: undo it and get pixels in [0, 1]; values leave [-1, 1].
  pixels = weak * STD + MEAN
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert weak.min() < -1.2 and weak.max() > 1.2
  # Exact values on a constant image.
  gray = np.full((40, 50, 3), 100, np.uint8)
  np.testing.assert_allclose(augment.weak_view(gray, rng, 16),
                             np.broadcast_to((100 / 255 - MEAN) / STD, (16, 16, 3)), atol=1e-5)
  np.testing.assert_allclose(augment.strong_view(gray, rng, 16), 100 / 127.5 - 1, atol=1e-6)
  # eval view = resize shorter side, center crop: a left/right split image stays split.
  half = np.zeros((60, 120, 3), np.uint8)
  half[:, 60:] = 255
  ev = augment.eval_view(half, 30)
  assert ev[:, :12].max() < -0.9 and ev[:, 18:].min() > 0.9


def test_views_deterministic_given_generator():
  photo = SampleImages()[1]["image"]
  t = augment.TrainAugment(64, (0.5, 1.0), align_views=True, align_size=32)
  a = t({"image": photo, "label": 3}, np.random.default_rng(5))
  b = t({"image": photo, "label": 3}, np.random.default_rng(5))
  c = t({"image": photo, "label": 3}, np.random.default_rng(6))
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["image"], c["image"])
  assert a["label"].dtype == np.int32 and a["label"] == 3


def test_small_and_degenerate_images():
  rng = np.random.default_rng(0)
  tiny = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  t = augment.TrainAugment(64, (0.8, 1.0), align_views=True, align_size=32)
  for image in (tiny, tiny[:1, :1], tiny[:, :, 0]):          # 5x7, 1x1, grayscale 2-D
    out = t({"image": image, "label": 0}, rng)
    assert out["image"].shape == (64, 64, 3) and out["weak"].shape == (32, 32, 3)
    assert np.isfinite(out["image"]).all()
    assert augment.eval_view(image, 64).shape == (64, 64, 3)
  for empty in (np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0, 3), np.uint8)):
    with pytest.raises(ValueError, match="0 pixels"):
      augment.main_view(empty, rng, 64)
    with pytest.raises(ValueError, match="0 pixels"):
      augment.eval_view(empty, 64)
  with pytest.raises(ValueError, match="crop_scale"):
    augment.TrainAugment(64, (0.0, 1.0))


# ------------------------------------------------------------------------------ pipeline

def test_train_batches_shapes_dtypes_ranges():
  config = _config(batch=6)
  it = make_train_iterator(config, seed=0, process_index=0, process_count=1)
  for batch in _take(it, 3):
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (6, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["image"].std() > 0.1
    assert ((0 <= batch["label"]) & (batch["label"] < len(SampleImages()))).all()


def test_align_views_in_batches():
  config = _config(batch=4, align_views=True, align_size=32)
  batch = next(make_train_iterator(config, seed=1, process_index=0, process_count=1))
  assert set(batch) == {"image", "label", "weak", "strong"}
  assert batch["image"].shape == (4, 64, 64, 3)
  for key in ("weak", "strong"):
    assert batch[key].shape == (4, 32, 32, 3) and batch[key].dtype == np.float32
  assert batch["strong"].min() >= -1 and batch["strong"].max() <= 1
  pixels = batch["weak"] * STD + MEAN
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert np.abs(batch["weak"]).max() > 1.0          # normalised, not [-1, 1]


def test_same_seed_same_batches_different_seed_different():
  config = _config(batch=4, align_views=True, align_size=16)
  a = _take(make_train_iterator(config, seed=3, process_index=0, process_count=1), 4)
  b = _take(make_train_iterator(config, seed=3, process_index=0, process_count=1), 4)
  c = _take(make_train_iterator(config, seed=4, process_index=0, process_count=1), 4)
  assert _same(a, b)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  # epochs reshuffle and re-augment: 11 images, batch 4 -> steps 0 and 3 are other epochs
  assert not np.array_equal(a[0]["image"], a[3]["image"])


def test_a_resumed_stream_starts_at_its_step_on_any_layout():
  """A run resumed at step s reads global batches s, s+1, ... (no stored iterator state):
  the same whatever the number of worker processes, and with P processes each loading its
  rows (P = 2 and 4), the stacked rows are the 1-process batches."""
  config = _config(batch=4)
  one = _take(make_train_iterator(config, seed=2, process_index=0, process_count=1), 5)
  resumed = _take(make_train_iterator(config, seed=2, start=3, process_index=0,
                                      process_count=1), 2)
  assert _same(resumed, one[3:])
  config.data.num_workers = 2
  with_workers = make_train_iterator(config, seed=2, start=1, process_index=0, process_count=1)
  assert _same(_take(with_workers, 2), one[1:3])   # batch j does not depend on the workers
  config.data.num_workers = 0
  for count in (2, 4):
    parts = [_take(make_train_iterator(config, seed=2, start=3 if count == 2 else 0,
                                       process_index=p, process_count=count), 2 if count == 2 else 5)
             for p in range(count)]
    for j, whole in enumerate(one[3:] if count == 2 else one):
      assert parts[0][j]["image"].shape[0] == 4 // count
      for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([part[j][key] for part in parts]),
                                      whole[key])
  with pytest.raises(ValueError, match="start must be >= 0"):
    make_train_iterator(config, seed=2, start=-1, process_index=0, process_count=1)


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match="not divisible"):
    make_train_iterator(_config(batch=5), seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    make_train_iterator(_config(batch=4), seed=0, process_index=2, process_count=2)


def test_process_defaults_come_from_jax():
  import jax
  config = _config(batch=jax.process_count() * 2)
  assert next(make_train_iterator(config, seed=0))["image"].shape[0] == 2


def test_eval_batch_is_fixed_center_crops(samples):
  config = _config()
  a = make_eval_batch(config, 5)
  b, labels = make_eval_batch(config, 5, with_labels=True)
  assert a.shape == (5, 64, 64, 3) and a.dtype == np.float32
  assert a.min() >= -1 and a.max() <= 1
  np.testing.assert_array_equal(a, b)
  idx = pipeline.eval_indices(len(samples), 5)
  np.testing.assert_array_equal(labels, idx)
  np.testing.assert_array_equal(a[0], augment.eval_view(samples[int(idx[0])]["image"], 64))
  assert make_eval_batch(config).shape[0] == config.data.eval_images
  assert make_eval_batch(config, 13).shape == (13, 64, 64, 3)   # more than 11: wraps


# -------------------------------------------------------------------------- image folder

def _save(path, array, mode=None, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path, fmt)


@pytest.fixture
def image_tree(tmp_path):
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  root = tmp_path / "images"
  _save(str(root / "cats" / "a.png"), rgb(40, 50))
  _save(str(root / "cats" / "B.JPEG"), rgb(30, 30))                            # upper case
  _save(str(root / "cats" / "gray.jpg"), rng.integers(0, 256, (20, 25), dtype=np.uint8))
  rgba = np.concatenate([rgb(16, 16), np.zeros((16, 16, 1), np.uint8)], -1)     # transparent
  _save(str(root / "cats" / "rgba.png"), rgba)
  (root / "dogs").mkdir()
  Image.fromarray(rgb(24, 24)).convert("CMYK").save(str(root / "dogs" / "cmyk.jpg"))
  (root / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
  good = root / "dogs" / "good.png"
  _save(str(good), rgb(32, 48))
  full = (root / "dogs" / "good.png").read_bytes()
  (root / "dogs" / "truncated.png").write_bytes(full[: len(full) // 2])
  _save(str(root / "dogs" / "palette.png"), rgb(20, 20)[..., 0], "L")
  Image.open(str(root / "dogs" / "palette.png")).convert("P").save(str(root / "dogs" / "p.png"))
  (root / "dogs" / "notes.txt").write_text("not an image")
  return root


def test_image_folder_decodes_and_skips_corrupt(image_tree):
  src = ImageFolder(str(image_tree))
  assert src.classes == ["cats", "dogs"]
  assert len(src) == 10                       # 4 cats + 6 dogs image files, no .txt
  assert src.num_skipped == 0                 # nothing decoded yet: lazy
  names = [os.path.basename(p) for p in src.paths]
  items = [src[i] for i in range(len(src))]   # never raises
  for item in items:
    assert item["image"].dtype == np.uint8 and item["image"].shape[-1] == 3
  assert src.num_skipped == 2
  assert sorted(os.path.basename(s.split(":")[0]) for s in src.skipped) == [
      "corrupt.jpg", "truncated.png"]
  # a skipped file is replaced by the next readable one, deterministically
  bad = names.index("corrupt.jpg")
  np.testing.assert_array_equal(items[bad]["image"], items[bad + 1]["image"])
  assert items[bad]["label"] == 1
  # RGBA: fully transparent pixels composite onto white; grayscale -> 3 equal channels
  np.testing.assert_array_equal(items[names.index("rgba.png")]["image"], 255)
  gray = items[names.index("gray.jpg")]["image"]
  assert np.array_equal(gray[..., 0], gray[..., 1])
  assert [items[i]["label"] for i in range(4)] == [0, 0, 0, 0]


def test_image_folder_pipeline_never_crashes(image_tree):
  config = _config(batch=4, source="folder", path=str(image_tree), align_views=True,
                   align_size=16)
  it = make_train_iterator(config, seed=0, process_index=0, process_count=1)
  for batch in _take(it, 6):               # > 2 epochs over 10 files
    assert batch["image"].shape == (4, 64, 64, 3)
    assert set(batch["label"].tolist()) <= {0, 1}
  assert make_eval_batch(config, 3).shape == (3, 64, 64, 3)


def test_image_folder_train_val_layout(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 3), ("val", 2)):
    for i in range(n):
      _save(str(tmp_path / split / "k" / f"{i}.png"),
            rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  assert len(ImageFolder(str(tmp_path), "train")) == 3
  assert len(ImageFolder(str(tmp_path), "val")) == 2
  assert len(sources.source_from_config(_config(source="folder", path=str(tmp_path)),
                                        train=False)) == 2


def test_image_folder_missing_or_empty_raises_before_iterating(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(ValueError, match=str(missing)):
    ImageFolder(str(missing))
  empty = tmp_path / "empty"
  (empty / "some_class").mkdir(parents=True)
  (empty / "some_class" / "readme.txt").write_text("x")
  with pytest.raises(ValueError, match=str(empty)):
    ImageFolder(str(empty))
  with pytest.raises(ValueError, match=str(empty)):
    make_train_iterator(_config(source="folder", path=str(empty)), seed=0,
                        process_index=0, process_count=1)
  with pytest.raises(ValueError, match="data.path"):
    make_train_iterator(_config(source="folder", path=""), seed=0, process_index=0,
                        process_count=1)
  with pytest.raises(ValueError, match="data.source"):
    sources.source_from_config(_config(source="webdataset"))


# -------------------------------------------------------------------------------- tfds

def test_tfds_missing_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    TfdsSource("anything")


def test_package_imports_without_tfds():
  code = ("import sys; import mergevq_jax.data; "
          "assert 'tensorflow_datasets' not in sys.modules; "
          "assert 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _build_tiny_tfds(data_dir, examples):
  """A tiny tfds dataset in ArrayRecord format, written without TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class TinyPhotos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(examples),
              "validation": self._generate_examples(examples[:2])}

    def _generate_examples(self, items):
      for i, (image, label) in enumerate(items):   # PIL images: encoding needs no TF
        yield i, {"image": Image.fromarray(image), "label": label}

  TinyPhotos(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return "tiny_photos"


def test_tfds_array_record_source(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  rng = np.random.default_rng(0)
  examples = [(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8), i % 3) for i in range(6)]
  name = _build_tiny_tfds(tmp_path, examples)
  src = TfdsSource(name, "train", str(tmp_path))
  assert len(src) == 6
  by_height = {img.shape[0]: (img, label) for img, label in examples}
  for i in range(len(src)):
    item = src[i]
    image, label = by_height[item["image"].shape[0]]
    np.testing.assert_array_equal(item["image"], image)       # PNG round trip is lossless
    assert item["label"] == label
  config = _config(batch=4, source="tfds", tfds_name=name, path=str(tmp_path))
  batch = next(make_train_iterator(config, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 64, 64, 3) and batch["label"].dtype == np.int32
  assert make_eval_batch(config, 2).shape == (2, 64, 64, 3)     # from 'validation'
  assert "tensorflow" not in sys.modules                         # read without TensorFlow
  with pytest.raises(ValueError, match="no split 'test'"):
    TfdsSource(name, "test", str(tmp_path))
  with pytest.raises(ValueError, match="not prepared|not found"):
    TfdsSource("mnist", "train", str(tmp_path / "elsewhere"))
