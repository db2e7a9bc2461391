"""Random-access image sources: offline sample photos, image folders, tfds ArrayRecord.

Every source has `__len__` and `__getitem__(i) -> {'image': uint8 (H, W, 3), 'label': int}`,
so grain's `MapDataset.source` can wrap it directly. Nothing here touches the network:
sample photos are read from files that ship inside installed packages, folders and tfds
datasets from local disk (`tfds.data_source(..., download=False)`).

Corrupt files never crash a run: `ImageFolder` and `TfdsSource` decode lazily, and an item
that fails to decode is replaced by the next readable index (deterministic), counted in
`source.num_skipped`, listed in `source.skipped`, and logged once with a warning.
With grain worker processes (`data.num_workers > 0`) each worker keeps its own count (the
warning is logged from the worker); the main-process counter sees main-process reads only.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from mergevq_jax import files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SOURCES = ("samples", "folder", "tfds")
EVAL_SPLITS = ("eval", "val", "validation", "test")

TFDS_INSTALL_HINT = ("TfdsSource needs tensorflow-datasets (ArrayRecord datasets are read "
                     "without TensorFlow): pip install tensorflow-datasets array_record "
                     "(or pip install 'mergevq_jax[tfds]')")


# ----------------------------------------------------------------------------- decoding

def to_rgb_uint8(img: Image.Image) -> np.ndarray:
  """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F, ...) -> uint8 (H, W, 3).

  Transparent pixels are composited onto white (plain `convert('RGB')` would expose the
  undefined colour under alpha=0); 16-bit and float images are scaled to 0..255."""
  mode = img.mode
  if mode == "RGB":
    out = np.asarray(img)
  elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
  elif mode.startswith("I;16") or mode in ("I", "F"):
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
    if mode == "F" and arr.max() <= 1.0:
      top = 1.0
    gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
    out = np.repeat(gray[..., None], 3, axis=-1)
  else:                                   # L, 1, P, CMYK, YCbCr, LAB, HSV ...
    out = np.asarray(img.convert("RGB"))
  out = np.ascontiguousarray(out, dtype=np.uint8)
  if out.ndim != 3 or out.shape[-1] != 3 or out.shape[0] == 0 or out.shape[1] == 0:
    raise ValueError(f"decoded image has unusable shape {out.shape}")
  return out


def decode_image_file(path: str) -> np.ndarray:
  """Decode one image file (local or gs://...) fully (truncated files raise here, not
  later) to uint8 RGB."""
  with files.open_for_reading(path) as f, Image.open(f) as img:
    img.load()
    return to_rgb_uint8(img)


def array_to_rgb_uint8(image: Any) -> np.ndarray:
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array -> (H, W, 3) uint8."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an (H, W, 1|3|4) image, got shape {arr.shape}")
  if arr.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  elif arr.shape[-1] == 4:
    arr = to_rgb_uint8(Image.fromarray(arr, "RGBA"))
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"degenerate image with 0 pixels (shape {arr.shape})")
  return np.ascontiguousarray(arr)


def is_eval_split(split: str) -> bool:
  return split in EVAL_SPLITS


# ------------------------------------------------------------------ skip-and-count base

class _ReplacingSource:
  """Base for lazily decoded sources: an item that fails to decode is replaced by the next
  readable index (i+1, i+2, ... wrapping around), counted and logged once per item."""

  def __init__(self):
    self._bad: dict[int, str] = {}       # index -> "what: why"
    self._lock = threading.Lock()

  # subclasses implement these
  def __len__(self) -> int:
    raise NotImplementedError

  def _read(self, index: int) -> tuple[np.ndarray, int]:
    raise NotImplementedError

  def _describe(self, index: int) -> str:
    return f"item {index}"

  @property
  def num_skipped(self) -> int:
    """How many distinct items failed to decode (so far, in this process)."""
    return len(self._bad)

  @property
  def skipped(self) -> list[str]:
    """'what: why' for every item that failed to decode (so far, in this process)."""
    with self._lock:
      return [self._bad[k] for k in sorted(self._bad)]

  def __getitem__(self, index) -> dict[str, Any]:
    n = len(self)
    index = int(index)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
    index %= n
    for k in range(n):
      j = (index + k) % n
      if j in self._bad:
        continue
      try:
        image, label = self._read(j)
      except Exception as e:  # noqa: BLE001 -- any decode failure is a skip, never a crash
        self._record_bad(j, e)
        continue
      return {"image": image, "label": int(label)}
    raise ValueError(f"{type(self).__name__}: none of its {n} items could be decoded; "
                     f"first failures: {self.skipped[:3]}")

  def _record_bad(self, index: int, error: Exception) -> None:
    what = f"{self._describe(index)}: {type(error).__name__}: {error}"
    with self._lock:
      if index in self._bad:
        return
      self._bad[index] = what
      count = len(self._bad)
    logging.warning("skipping unreadable image (%d skipped so far in this process; replaced "
                    "by the next readable one): %s", count, what)

  def __getstate__(self):
    state = self.__dict__.copy()
    state.pop("_lock", None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


# ------------------------------------------------------------------------ sample images

def _package_dir(package: str) -> str | None:
  """Directory of an installed package, found without importing it."""
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


# (name, package, file relative to the package). The files ship inside the wheels, so
# reading them never triggers scikit-image's pooch download path (pooch is only used for
# files that are *not* in the distribution; we read the distribution files directly).
# `skimage.data.cat()` returns the same file as `chelsea()`, so it is not listed twice;
# `stereo_motorcycle()` is the two views below (its disparity map is not an image).
SAMPLE_FILES = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    ("immunohistochemistry", "skimage", "data/ihc.png"),
    ("retina", "skimage", "data/retina.jpg"),
    ("stereo_motorcycle_left", "skimage", "data/motorcycle_left.png"),
    ("stereo_motorcycle_right", "skimage", "data/motorcycle_right.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)
SAMPLE_DUPLICATES = {"cat": "same file as 'chelsea' (skimage.data.cat() returns chelsea.png)"}


def _probe_sample_files() -> tuple[list[tuple[str, str]], dict[str, str]]:
  found, excluded = [], dict(SAMPLE_DUPLICATES)
  for name, package, rel in SAMPLE_FILES:
    root = _package_dir(package)
    if root is None:
      excluded[name] = f"package {package!r} is not installed"
      continue
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
      excluded[name] = (f"{path} is not in this {package} install (it would need a "
                        f"download, which is never attempted)")
      continue
    found.append((name, path))
  return found, excluded


class SampleImages:
  """Real photographs shipped inside scikit-image and scikit-learn (about 11, offline).

  Label = index of the image. There are too few images for a held-out split, so 'train'
  and 'eval' hold the SAME images; they differ in the view the pipeline takes (random
  crops for training, fixed center crops for eval — see `augment.eval_view`). Files that
  are missing or fail to decode are skipped and recorded in `excluded` (name -> reason).
  """

  def __init__(self, split: str = "train"):
    if split != "train" and not is_eval_split(split):
      raise ValueError(f"SampleImages split must be 'train' or one of {EVAL_SPLITS}, "
                       f"got {split!r}")
    self.split = split
    candidates, self.excluded = _probe_sample_files()
    self._images: list[np.ndarray] = []
    self.names: list[str] = []
    for name, path in candidates:
      try:
        image = decode_image_file(path)
      except Exception as e:  # noqa: BLE001
        self.excluded[name] = f"failed to decode {path}: {type(e).__name__}: {e}"
        continue
      self.names.append(name)
      self._images.append(image)
    if not self._images:
      raise ValueError(f"no sample images could be loaded (install scikit-image and/or "
                       f"scikit-learn); reasons: {self.excluded}")
    if len(self.excluded) > len(SAMPLE_DUPLICATES):
      logging.info("SampleImages: %d images loaded, excluded: %s", len(self._images),
                   self.excluded)

  num_skipped = 0
  skipped: list[str] = []

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index) -> dict[str, Any]:
    index = int(index)
    return {"image": self._images[index], "label": index % len(self._images)}

  def __repr__(self) -> str:
    return f"SampleImages(split={self.split!r}, n={len(self)}, names={self.names})"


# ------------------------------------------------------------------------- image folder

def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _split_dir(root, split: str):
  """root/train for 'train', root/val (or validation) for eval splits, else root itself."""
  names = {"train": ("train",), "test": ("test",)}.get(split, ())
  if is_eval_split(split) and split != "test":
    names = ("val", "validation", "eval")
  for name in names:
    candidate = root / name
    if candidate.is_dir():
      return candidate
  if is_eval_split(split):
    train = root / "train"
    fallback = train if train.is_dir() else root
    logging.warning("ImageFolder: no %s/{val,validation,eval} directory; the %r split uses "
                    "the images in %s", root, split, fallback)
    return fallback
  return root


class ImageFolder(_ReplacingSource):
  """ImageNet-style tree: `root/<class>/.../*.jpg|png` (extensions case-insensitive), or
  `root/train/<class>/...` and `root/val/<class>/...` chosen by `split`.

  Classes are the sorted sub-folder names (label = position); a folder with images but no
  class sub-folders is one class (label 0). Files are decoded lazily with PIL and converted
  to RGB; corrupt files are skipped and counted (see module docstring). `root` may be
  local or in an object store (gs://...): the tree is listed once.
  """

  def __init__(self, root: str, split: str = "train"):
    super().__init__()
    if not root:
      raise ValueError("ImageFolder needs a root directory (config.data.path is empty)")
    path = files.path(root)
    if not path.is_dir():
      raise ValueError(f"image folder {path} does not exist or is not a directory")
    self.root = os.fspath(path)
    self.split = split
    directory = _split_dir(path, split)
    self.directory = os.fspath(directory)
    by_class: dict[str, list[str]] = {}   # class folder -> its images, in walk order
    loose = []                            # images directly in the directory
    for f in files.walk_files(directory):
      parts = f.relative_to(directory).parts
      if not _is_image(f.name):
        continue
      if len(parts) == 1:
        loose.append(os.fspath(f))
      elif not parts[0].startswith("."):
        by_class.setdefault(parts[0], []).append(os.fspath(f))
    paths, labels, classes = [], [], []
    for name in sorted(by_class):
      labels += [len(classes)] * len(by_class[name])
      classes.append(name)
      paths += by_class[name]
    if not paths:                        # images directly in the directory: one class
      paths, labels = loose, [0] * len(loose)
      classes = [directory.name] if paths else []
    if not paths:
      raise ValueError(f"image folder {self.directory} contains no images "
                       f"(looked for {', '.join(IMAGE_EXTENSIONS)} in class sub-folders)")
    self.classes = classes
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def _read(self, index: int) -> tuple[np.ndarray, int]:
    return decode_image_file(self.paths[index]), int(self.labels[index])

  def _describe(self, index: int) -> str:
    return self.paths[index]

  def __repr__(self) -> str:
    return (f"ImageFolder({self.directory!r}, n={len(self)}, classes={len(self.classes)}, "
            f"skipped={self.num_skipped})")


# -------------------------------------------------------------------------------- tfds

def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(TFDS_INSTALL_HINT) from e
  return tfds


class TfdsSource(_ReplacingSource):
  """A prepared tfds dataset in ArrayRecord format, read with `tfds.data_source` (no
  TensorFlow, no download: `download=False`). Uses the feature named `image_key` (default:
  'image', else the first Image feature) and `label_key` (default 'label' if present,
  else every label is 0)."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, *,
               image_key: str | None = None, label_key: str | None = None):
    super().__init__()
    tfds = _import_tfds()
    self.name, self.split, self.data_dir = name, split, (data_dir or None)
    where = self.data_dir or "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    try:
      builder = tfds.builder(name, data_dir=self.data_dir)
    except Exception as e:  # noqa: BLE001 -- DatasetNotFoundError etc.
      raise ValueError(f"tfds dataset {name!r} not found in {where}: "
                       f"{str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
      raise ValueError(f"tfds dataset {name!r} is not prepared in {where} (expected "
                       f"{builder.data_dir}); prepare it in ArrayRecord format first "
                       f"(download_and_prepare(file_format='array_record'))")
    info = builder.info
    if "array_record" not in str(info.file_format).lower():
      raise ValueError(f"tfds dataset {name!r} in {builder.data_dir} is stored as "
                       f"{info.file_format}; random access needs file_format='array_record'")
    splits = list(info.splits)
    if split not in info.splits:
      raise ValueError(f"tfds dataset {name!r} has no split {split!r}; it has {splits}")
    features = info.features
    image_features = [k for k, f in features.items()
                      if type(f).__name__ == "Image"]
    self.image_key = image_key or ("image" if "image" in features else
                                   (image_features[0] if image_features else None))
    if self.image_key is None or self.image_key not in features:
      raise ValueError(f"tfds dataset {name!r} has no image feature (features: "
                       f"{list(features)}); pass image_key=")
    self.label_key = label_key or ("label" if "label" in features else None)
    self._source = tfds.data_source(name, split=split, data_dir=self.data_dir, download=False)

  def __len__(self) -> int:
    return len(self._source)

  def _read(self, index: int) -> tuple[np.ndarray, int]:
    example = self._source[index]
    image = array_to_rgb_uint8(example[self.image_key])
    label = int(example[self.label_key]) if self.label_key else 0
    return image, label

  def _describe(self, index: int) -> str:
    return f"{self.name}[{self.split}] record {index}"

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"


# ---------------------------------------------------------------------------- factory

def eval_split_name(config) -> str:
  """The split make_eval_batch reads: 'eval' for samples, 'val' for folders (root/val,
  falling back to the train images with a warning), and for tfds the first of
  validation/test the dataset has (else config.data.split)."""
  d = config.data
  if d.source == "tfds":
    tfds = _import_tfds()
    try:
      splits = list(tfds.builder(d.tfds_name, data_dir=d.path or None).info.splits)
    except Exception:  # noqa: BLE001 -- TfdsSource reports the real problem
      splits = []
    for name in ("validation", "test"):
      if name in splits:
        return name
    logging.warning("tfds dataset %r has no validation/test split; eval images come from %r",
                    d.tfds_name, d.split)
    return d.split
  return "val" if d.source == "folder" else "eval"


def override_data(config, source: str = "", path: str | None = None,
                  split: str | None = None) -> None:
  """Command-line overrides of config.data (in place): a non-empty source, and path /
  split when given."""
  d = config.data
  if source:
    d.source = source
  if path is not None:
    d.path = path
  if split is not None:
    d.split = split


def source_from_config(config, *, train: bool = True):
  """The source `config.data` names, for training (`data.split`) or evaluation."""
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES}, got {d.source!r}")
  split = d.split if train else eval_split_name(config)
  if d.source == "samples":
    return SampleImages(split)
  if d.source == "folder":
    if not d.path:
      raise ValueError("config.data.source='folder' needs config.data.path (the image root)")
    return ImageFolder(d.path, split)
  return TfdsSource(d.tfds_name, split, d.path or None)
