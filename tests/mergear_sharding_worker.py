"""Run by test_mergear.py in a subprocess with 8 fake CPU devices; prints one JSON line.

For each mesh: create the small MergeAR directly sharded, run the teacher-forced cached
decoder and the sampler on a batch split over the devices, and compare with one device.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mergevq_jax import sharding  # noqa: E402
from mergevq_jax.models.ar import decode as md  # noqa: E402
from mergevq_jax.models.ar.kv_cache import CacheLayout  # noqa: E402
from mergevq_jax.models.ar.mergear import PREFIX, MergeAR  # noqa: E402
from mergevq_jax.models.ar.sampling import SamplingParams  # noqa: E402
from test_mergear import L, VOCAB, randomized, small_config  # noqa: E402


def run(graphdef, state, codes, cls, keep, key):
  layout = CacheLayout.make(PREFIX, L, "merge", 5, 3)
  forced = jax.jit(lambda s, c, y, k: md.teacher_forced_logits(nnx.merge(graphdef, s), layout,
                                                               c, y, k))
  logits, stats = forced(state, codes, cls, keep)
  gen = md.make_generate_fn(graphdef, layout, guidance=True)
  sampled, _ = gen(state, key, cls, keep, SamplingParams.make(1.0, 0, 0.9, 2.0))
  greedy, _ = gen(state, key, cls, keep, SamplingParams.make(0.0, 0, 1.0, 2.0))
  return logits, stats, sampled, greedy


def main():
  assert jax.device_count() == 8, jax.devices()
  codes = jax.random.randint(jax.random.key(0), (8, L), 0, VOCAB)
  cls = jnp.arange(8, dtype=jnp.int32)
  keep = jnp.arange(8, dtype=jnp.int32) % 2
  key = jax.random.key(4)
  results = {}
  # 'cpu': layers unrolled over per-layer cache slabs; 'tpu': a scan over the stacked
  # layers and cache (logical axes cache_batch, cache_heads, ...), compiled here on CPU.
  for platform, shape in [("cpu", (2, 2, 2)), ("tpu", (2, 2, 2))]:
    make = lambda: randomized(MergeAR(small_config(platform, num_heads=4), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(make())
    ref = run(graphdef, state, codes, cls, keep, key)
    mesh = sharding.make_mesh(shape)   # batch over data x fsdp, heads and FFN over tensor
    rules = sharding.DEFAULT_RULES
    g2, st2 = sharding.init_sharded(make, mesh, rules)
    with sharding.use_mesh(mesh, rules):
      out = run(g2, st2, *sharding.shard_batch((codes, cls, keep), mesh, rules), key)
    wqkv = st2["layers"]["wqkv"][...]
    name = "x".join(map(str, shape)) + ("" if platform == "cpu" else "-scan")
    results[name] = {
        "logits_max_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                               for a, b in zip(out[0], ref[0])),
        "stats_equal": all(np.array_equal(a, b) for a, b in zip(out[1], ref[1])),
        "sampled_equal": bool(np.array_equal(out[2], ref[2])),
        "greedy_equal": bool(np.array_equal(out[3], ref[3])),
        "wqkv_spec": [str(a) for a in wqkv.sharding.spec],
        "codes_spec": [str(a) for a in out[2].sharding.spec],
    }
  print(json.dumps(results))


if __name__ == "__main__":
  main()
