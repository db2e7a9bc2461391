"""Read PyTorch zip archives without PyTorch: TorchScript modules (`torch.jit.save`) and
zip-format state dicts (`torch.save`, PyTorch >= 1.6).

An archive is a zip of `<root>/data.pkl` (a pickle of the object tree whose tensors are
persistent references to raw storages) and `<root>/data/<key>` (the storages, little
endian). The pickle is read with an unpickler that builds only plain containers, tensors
(as numpy arrays) and generic `ScriptObject`s for TorchScript modules; any other global
is refused, so a malicious pickle cannot run code.

  tree = read_archive("default_1.pt")     # ScriptObject / dict / list / np.ndarray ...
  flat = flatten(tree)                    # {"net.layers.conv.weight": array, ...,
                                          #  "net.layers.conv.stride": 2, ...}
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class ScriptObject:
  """A TorchScript object (module) from an archive: its type name and attributes."""

  type_name = "ScriptObject"

  def __init__(self):
    self.attrs: dict[str, Any] = {}

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise ValueError(f"unexpected state of {self.type_name}: {type(state).__name__}")
    self.attrs = state

  def __repr__(self):
    return f"ScriptObject({self.type_name}, {sorted(self.attrs)})"


class _Storage:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[offset])
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * item for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, root: str, source: str):
    super().__init__(file)
    self._archive, self._root, self._source = archive, root, source
    self._storages: dict[str, np.ndarray] = {}
    self._types: dict[str, type] = {}

  def find_class(self, module, name):
    if module.startswith("__torch__"):   # NEWOBJ needs a class: one subclass per type
      type_name = f"{module}.{name}"
      if type_name not in self._types:
        self._types[type_name] = type(name, (ScriptObject,), {"type_name": type_name})
      return self._types[type_name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _Storage(_STORAGE_DTYPES[name])
    if module == "torch" and name == "BFloat16Storage":
      import ml_dtypes
      return _Storage(ml_dtypes.bfloat16)
    if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                          ("torch._utils", "_rebuild_tensor")):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
      return lambda value, type_str: value
    if module == "torch.jit._pickle" and name.startswith("build_"):
      return lambda value: value
    raise pickle.UnpicklingError(f"{self._source}: the archive refers to {module}.{name}, "
                                 f"which this reader does not build (not a tensor archive?)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self._source}: unknown persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._root}/data/{key}")
      except KeyError:
        raise ValueError(f"{self._source}: storage data/{key} is missing from the archive")
      dtype = np.dtype(storage_type.dtype).newbyteorder("<")
      arr = np.frombuffer(raw, dtype=dtype)
      if arr.size < numel:
        raise ValueError(f"{self._source}: storage data/{key} holds {arr.size} values, "
                         f"expected {numel}")
      self._storages[key] = arr.astype(arr.dtype.newbyteorder("="))
    return self._storages[key]


def is_archive(path: str | os.PathLike) -> bool:
  """Whether `path` is a zip with a `*/data.pkl` (a torch zip archive)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in z.namelist())


def read_archive(path: str | os.PathLike) -> Any:
  """The object tree of a torch zip archive; tensors become numpy arrays."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file not found: {path}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not a PyTorch zip archive (torch.jit.save / torch.save of "
                     f"PyTorch >= 1.6 write zips; an older torch.save file needs PyTorch)")
  with zipfile.ZipFile(path) as z:
    roots = [n[:-len("/data.pkl")] for n in z.namelist()
             if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
      raise ValueError(f"{path}: expected one <root>/data.pkl in the archive, found "
                       f"{len(roots)}")
    with z.open(f"{roots[0]}/data.pkl") as f:
      return _Unpickler(f, z, roots[0], path).load()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted path: leaf} of ScriptObject attributes and dict entries; leaves are arrays and
  scalars / lists (TorchScript module attributes such as stride and padding)."""
  if isinstance(tree, ScriptObject):
    items = tree.attrs.items()
  elif isinstance(tree, dict):
    items = tree.items()
  else:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out
