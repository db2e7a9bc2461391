"""TPU generations and topology names for ahead-of-time compilation.

A topology is named as libtpu names it, `<chip>:<shape>` (v5p:4x4x4 = 64 chips), or as
Cloud TPU names a slice, `<chip>-<n>` (v5p-128), where n counts TensorCores on v4 and v5p
(2 per chip) and chips on v5e and v6e. The devices come from
`jax.experimental.topologies.get_topology_desc`: no TPU is needed, only libtpu.
"""
from __future__ import annotations

import importlib.util
import math
import re
from typing import NamedTuple


class Chip(NamedTuple):
  name: str               # 'v5p'
  hbm_gib: float          # HBM per chip
  peak_tflops: float      # dense bf16 TFLOP/s per chip
  hbm_tbps: float         # HBM bandwidth per chip, TB/s
  cores_per_chip: int     # TensorCores counted in a slice name (v5p-128: 64 chips)
  dims: int               # torus dimensions of the topology shape

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * 2 ** 30)


CHIPS = {
    "v4": Chip("v4", 32, 275.0, 1.2, 2, 3),
    "v5e": Chip("v5e", 16, 197.0, 0.82, 1, 2),
    "v5p": Chip("v5p", 95, 459.0, 2.76, 2, 3),
    "v6e": Chip("v6e", 32, 918.0, 1.64, 1, 2),
}
EXAMPLES = "v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:2x2x4, v5p:4x4x4, v6e:4x4, or v5e-16, v5p-128"


class Topology(NamedTuple):
  chip: Chip
  name: str               # libtpu's name, 'v5p:4x4x4'
  shape: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def slice_name(self) -> str:
    return f"{self.chip.name}-{self.num_chips * self.chip.cores_per_chip}"


def _shape_for(chips: int, dims: int) -> tuple[int, ...]:
  """The usual slice shape of `chips` chips: powers of two, as square as possible,
  smallest dimensions first (16 chips: 4x4 or 2x2x4), except that unit dimensions come
  last (4 chips of v5p: 2x2x1), as libtpu names them."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"{chips} chips: slices of a power-of-two number of chips only")
  shape = [1] * dims
  for _ in range(int(math.log2(chips))):
    shape[shape.index(min(shape))] *= 2
  return tuple(sorted(shape, reverse=1 in shape))


def parse_topology(name: str) -> Topology:
  """'v5p:4x4x4' or 'v5p-128' -> Topology; ValueError naming the accepted forms."""
  m = re.fullmatch(r"\s*(v\d+[a-z]?)\s*([:-])\s*([\dx]+)\s*", name or "")
  if not m or m.group(1) not in CHIPS:
    chip = m.group(1) if m else name
    raise ValueError(f"unknown TPU topology {name!r} (chip {chip!r}); accepted chips: "
                     f"{', '.join(CHIPS)}, as <chip>:<shape> or <chip>-<cores>, e.g. {EXAMPLES}")
  chip = CHIPS[m.group(1)]
  if m.group(2) == ":":
    try:
      shape = tuple(int(s) for s in m.group(3).split("x"))
    except ValueError:
      shape = ()
    if len(shape) != chip.dims or min(shape) < 1:
      raise ValueError(f"topology {name!r}: a {chip.name} shape has {chip.dims} dimensions, "
                       f"e.g. {'2x2x4' if chip.dims == 3 else '4x4'}")
  else:
    if not m.group(3).isdigit():
      raise ValueError(f"topology {name!r}: expected {chip.name}-<number>, e.g. {chip.name}-16")
    cores = int(m.group(3))
    if cores % chip.cores_per_chip:
      raise ValueError(f"{name}: {chip.name} slices count {chip.cores_per_chip} TensorCores "
                       f"per chip, so the number must be even")
    shape = _shape_for(cores // chip.cores_per_chip, chip.dims)
  return Topology(chip, f"{chip.name}:{'x'.join(map(str, shape))}", shape)


def libtpu_missing_message() -> str | None:
  """None when libtpu is importable, else what to install."""
  if importlib.util.find_spec("libtpu") is not None:
    return None
  import jax
  return (f"compiling for TPU needs libtpu, which is not installed: "
          f"pip install \"jax[tpu]=={jax.__version__}\" (about 700 MB; no TPU needed)")


def topology_devices(topology: Topology) -> list:
  """The devices of the topology (abstract TPU devices that can be compiled for)."""
  missing = libtpu_missing_message()
  if missing:
    raise ImportError(missing)
  import os
  # Without these libtpu looks for a TPU host's metadata and prints a page of warnings;
  # only the compiler is used here, so the slice's own name is what it would read.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.slice_name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu holds a lock file for the chips of a host; nothing here touches a chip, so
  # several compiling processes (and a training job on a TPU host) may load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  # v4 and v5p chips are one device each (megacore), as on a real slice.
  kwargs = {"chip_config_name": "megacore"} if topology.chip.cores_per_chip == 2 else {}
  if topology.num_chips == 1:   # a single chip needs its host bounds spelt out
    kwargs["chips_per_host_bounds"] = (1,) * 3
  try:
    desc = topologies.get_topology_desc(topology_name=topology.name, platform="tpu", **kwargs)
  except Exception as e:  # noqa: BLE001 -- libtpu's error, made one line with the forms
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"libtpu does not accept topology {topology.name!r} ({first}); "
                     f"e.g. {EXAMPLES}") from None
  return list(desc.devices)
