"""Device mesh from the config, logical axis rules, and sharding helpers.

Every parameter carries logical axis names in its Variable metadata under the key
`logical_axes` (e.g. ('embed', 'mlp') for an MLP kernel); key activations are
constrained with `constrain(x, names)`. One rules table (config.sharding.rules) maps
logical names to mesh axes ('data', 'fsdp', 'tensor'). A logical dimension whose size
is not divisible by its mesh axes drops trailing axes until it divides (a 3-channel
conv input is replicated; a batch of 4 on data=2, fsdp=4 splits over data only).

Axis types: the mesh uses `AxisType.Auto` on purpose. Explicit axes (the default of
`jax.make_mesh`) put shardings into array types and require every op to have a
sharding rule; ToMe's data-dependent gathers and scatters are simpler to leave to the
compiler (GSPMD/Shardy), with shardings pinned at parameters, inputs and a few
activations.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_channels", None),
    ("vocab", "tensor"),
    ("layers", None),              # stacked layer parameters (MergeAR), scanned over
    ("cache_batch", ("data", "fsdp")),   # MergeAR's KV cache (models/ar/kv_cache.py)
    ("cache_heads", "tensor"),
    ("cache_slots", None),
)

LOGICAL_KEY = "logical_axes"

_CONTEXT: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "mergevq_sharding", default=None)


def axes(*names: str | None) -> dict[str, tuple]:
  """Variable metadata that attaches logical axis names: `kernel_metadata=axes(...)`."""
  return {LOGICAL_KEY: tuple(names)}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with axes ('data', 'fsdp', 'tensor'); -1 in `shape` takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape needs {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one -1 in the mesh shape, got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not fill mesh shape {shape}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, {len(devices)} present")
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def mesh_from_config(config) -> Mesh:
  return make_mesh(tuple(config.sharding.mesh_shape))


def rules_from_config(config) -> tuple:
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding.rules)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None,
                    rules: Sequence[tuple[str, Any]], mesh: Mesh) -> P:
  """PartitionSpec for logical `names`; dims not divisible by their mesh axes replicate."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    target = table.get(name) if name is not None else None
    mesh_axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
    while shape is not None and mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
      mesh_axes = mesh_axes[:-1]  # drop trailing axes until the dimension divides
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def state_shardings(tree: Any, mesh: Mesh, rules) -> Any:
  """NamedSharding for every leaf of a pytree (abstract or concrete).

  nnx Variables (parameters, and optax states built from them, which keep the
  metadata) are placed by their logical axes; any other leaf (step counters, EMAs of
  scalars) is replicated.
  """
  def one(x):
    if not isinstance(x, nnx.Variable):
      return NamedSharding(mesh, P())
    names = x.get_metadata().get(LOGICAL_KEY)
    if names is None:
      names = (None,) * len(x.shape)
    if len(names) != len(x.shape):
      raise ValueError(f"logical axes {names} do not match parameter shape {x.shape}")
    return x.replace(NamedSharding(mesh, logical_to_spec(names, x.shape, rules, mesh)))
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_arrays(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves placed by the matching `shardings` (a restore
  target, or inputs to lower a function for a mesh)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[Mesh]:
  """Within this context `constrain` pins activations to `mesh` according to `rules`."""
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside `use_mesh`."""
  ctx = _CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(names, x.shape, rules, mesh)))


def shard_batch(x: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Put a host batch (leading axis = batch) onto the mesh, batch split over data axes.

  Single-host only (the array is the global batch); multi-host training assembles the
  global batch with jax.make_array_from_process_local_data, as the trainer does.
  """
  def put(a):
    a = np.asarray(a) if not isinstance(a, jax.Array) else a
    dp = math.prod(mesh.shape[ax] for ax in ("data", "fsdp"))
    if a.shape[0] % dp:
      raise ValueError(
          f"batch of {a.shape[0]} is not divisible by the {dp} data-parallel devices "
          f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
    names = ("batch",) + (None,) * (a.ndim - 1)
    return jax.device_put(a, NamedSharding(mesh, logical_to_spec(names, a.shape, rules, mesh)))
  return jax.tree.map(put, x)


def init_state(init_fn, mesh: Mesh, rules=DEFAULT_RULES) -> tuple[Any, Any]:
  """Run init_fn () -> pytree (a train state) jitted, its output placed by
  `state_shardings`. Returns (state, shardings)."""
  shardings = state_shardings(jax.eval_shape(init_fn), mesh, rules)
  with use_mesh(mesh, rules):
    return jax.jit(init_fn, out_shardings=shardings)(), shardings


def init_sharded(make_module, mesh: Mesh, rules=DEFAULT_RULES) -> tuple[nnx.GraphDef, Any]:
  """Create a module's state directly in its sharded layout (never whole on one device).

  make_module: () -> nnx.Module. Returns (graphdef, state) with every Variable placed
  per its logical axes and `rules`.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(make_module))
  shardings = state_shardings(abstract, mesh, rules)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    return nnx.split(make_module())[1]

  with use_mesh(mesh, rules):
    return graphdef, init()

