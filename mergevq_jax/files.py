"""Files of run directories, codes directories and data paths, on a local disk or in an
object store (gs://, s3://, ...).

Every such read and write goes through `etils.epath` (the path library orbax uses), never
`open` / `os.path`, so `--workdir=gs://bucket/run` is a bucket prefix and not a local
folder named 'gs:'. epath reaches gs:// through fsspec + gcsfs (`pip install -e .[gcs]`),
or through TensorFlow's gfile when TensorFlow happens to be installed.

An object store has no appends, no atomic renames and no locks, so:
  write_text / write_bytes   a local file is written under a temporary name and renamed
                             into place; an object is put in one request (atomic)
  append_text                appends to a local file; rewrites the object
  load_npy                   memory-maps a local file; reads an object into memory
(`run_dir.RunLock` holds a local run with flock and a remote one with a lease.)
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]


def path(p: PathLike) -> epath.Path:
  """An epath.Path; a local one is absolute with ~ expanded."""
  if is_local(p):
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))
  return epath.Path(p)


def is_local(p: PathLike) -> bool:
  """False for a URI (scheme://...), True for a path on this machine's file system."""
  return "://" not in os.fspath(p)


def join(p: PathLike, *parts: str) -> str:
  """`p/parts...` as a string (a URI stays a URI)."""
  return os.fspath(path(p).joinpath(*parts))


def write_bytes(p: PathLike, data: bytes) -> None:
  """Write a whole file atomically (readers see the old content or the new, never part);
  the folder is created if missing."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(target):
    target.write_bytes(data)
    return
  tmp = target.parent / (target.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(target)


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode())


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def write_json(p: PathLike, value: Any, indent: int | None = 1) -> None:
  write_text(p, json.dumps(value, indent=indent))


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def append_text(p: PathLike, text: str) -> None:
  """Append to a text file (created if missing)."""
  target = path(p)
  if is_local(target):
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
      f.write(text)
    return
  old = target.read_text() if target.exists() else ""
  write_text(target, old + text)


def save_npy(p: PathLike, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  write_bytes(p, buffer.getvalue())


def load_npy(p: PathLike) -> np.ndarray:
  """A .npy array: memory-mapped when local, read into memory from an object store."""
  source = path(p)
  if is_local(source):
    return np.load(os.fspath(source), mmap_mode="r")
  return np.load(io.BytesIO(source.read_bytes()))


def open_for_reading(p: PathLike):
  """A binary file object for a decoder (PIL, numpy): the file itself when local, the
  object's bytes when remote."""
  source = path(p)
  if is_local(source):
    return source.open("rb")
  return io.BytesIO(source.read_bytes())


def walk_files(root: PathLike) -> list[epath.Path]:
  """Every file under `root` in os.walk order with sorted names: a folder's files, then
  each sub-folder's, depth first."""
  top = path(root)
  found = [d / name for d, _, names in top.walk() for name in names]
  # A folder's files ((0, name)) sort before its sub-folders ((1, name)).
  order = lambda parts: [(1, p) for p in parts[:-1]] + [(0, parts[-1])]
  return sorted(found, key=lambda f: order(f.relative_to(top).parts))


def copy(src: PathLike, dst: PathLike) -> None:
  write_bytes(dst, path(src).read_bytes())
