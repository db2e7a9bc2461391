"""Model FLOPs of a function, counted from its jaxpr: matmuls (dot_general) and
convolutions, 2 FLOPs per multiply-add, scan bodies times their length.

XLA's cost analysis of a compiled program counts the body of a loop once, however many
times it runs (a MergeAR step scans its layers, the decoder its positions), so it cannot
give the FLOPs of such programs; the jaxpr can. Elementwise work is left out, as in the
usual MFU accounting; rematerialised forward passes are counted again where the
backward pass recomputes them (so `remat` raises the count: hardware FLOPs).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.extend import core

_CONTAINERS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  contract = math.prod(lhs[d] for d in lhs_contract)
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contract


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  out_feature_dim = dn.rhs_spec[0]
  per_output = math.prod(rhs) / rhs[out_feature_dim]   # kernel window x input channels / group
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(eqn):
  for key in _CONTAINERS:
    if key in eqn.params:
      j = eqn.params[key]
      yield j.jaxpr if isinstance(j, core.ClosedJaxpr) else j


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of a (closed) jaxpr: see the module docstring."""
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif name == "while":   # trip count unknown: one pass (the code has no while loops)
      total += jaxpr_flops(eqn.params["body_jaxpr"])
    else:
      total += sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn))
  return total


def function_flops(fn, *args, **kwargs) -> float:
  """FLOPs of fn(*args) (arrays or ShapeDtypeStructs) over the whole (global) batch."""
  return jaxpr_flops(jax.make_jaxpr(fn, **kwargs)(*args))
