"""Run by test_sharding.py in a subprocess with 8 fake CPU devices; prints one JSON line.

For each mesh: initialise the tiny tokenizer directly sharded, run the jitted
reconstruction on a sharded batch, and compare with the single-device result; then the
per-device bytes of the whole train state on a replicated and on FSDP meshes.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from conftest import load_config  # noqa: E402
from mergevq_jax import sharding  # noqa: E402
from mergevq_jax.models.tokenizer import Tokenizer, jit_method  # noqa: E402


def main():
  assert jax.device_count() == 8, jax.devices()
  cfg = load_config("tokenizer_tiny")
  m = cfg.model   # one down-sampling level, two ToMe blocks: the same kinds of layers,
  m.image_size, m.ch_mult, m.num_layers = 16, (1, 2), 2   # fewer to compile 8-way
  make = lambda: Tokenizer(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(make())
  images = np.asarray(jax.random.uniform(jax.random.key(3), (8, m.image_size, m.image_size, 3),
                                         minval=-1, maxval=1))
  ref_img, ref_enc = jit_method(graphdef, "reconstruct")(state, images, num_keep=36)
  results = {}
  for shape in [(2, 4, 1), (2, 2, 2)]:   # both split the batch over 'data' too
    mesh = sharding.make_mesh(shape)
    rules = sharding.DEFAULT_RULES
    g2, st2 = sharding.init_sharded(make, mesh, rules)
    init_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(st2)))
    fn = jit_method(g2, "reconstruct")  # traced under this mesh's rules
    with sharding.use_mesh(mesh, rules):
      img, enc = fn(st2, sharding.shard_batch(images, mesh, rules), num_keep=36)
    fc1 = st2["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"][...]
    qkv = st2["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"][...]
    stem = st2["encoder"]["stem"]["conv_in"]["kernel"][...]  # (3, 3, 3 RGB, 32)
    results["x".join(map(str, shape))] = {
        "init_max_diff": init_diff,
        "image_max_diff": float(np.abs(np.asarray(img) - np.asarray(ref_img)).max()),
        "owner_equal": bool(np.array_equal(np.asarray(enc.owner), np.asarray(ref_enc.owner))),
        "indices_equal": bool(np.array_equal(np.asarray(enc.indices), np.asarray(ref_enc.indices))),
        "fc1_spec": [str(a) for a in fc1.sharding.spec],
        "fc1_shard_shape": list(fc1.addressable_shards[0].data.shape),
        "qkv_spec": [str(a) for a in qkv.sharding.spec],
        "stem_spec": [str(a) for a in stem.sharding.spec],
        "output_spec": [str(a) for a in img.sharding.spec],
    }
  results["state_bytes"] = train_state_bytes_on_one_device(cfg)
  print(json.dumps(results))


def train_state_bytes_on_one_device(cfg) -> dict:
  """Bytes of the stage-1 train state's buffers on device 0, per mesh: replicated (data
  parallel), fsdp over 4 and over 8 devices. The buffers are placed with the shardings
  the trainer initialises and restores into (`sharding.state_shardings`)."""
  from mergevq_jax.train.tokenizer_state import abstract_state
  abstract = abstract_state(cfg)
  dev0 = jax.devices()[0]
  out = {}
  for shape in [(8, 1, 1), (2, 4, 1), (1, 8, 1)]:
    shardings = sharding.state_shardings(abstract, sharding.make_mesh(shape),
                                         sharding.DEFAULT_RULES)
    state = jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
                         abstract, shardings)
    on_dev0 = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree)
                               for s in x.addressable_shards if s.device == dev0)
    out["x".join(map(str, shape))] = {"params": on_dev0(state.params),
                                      "opt_state": on_dev0(state.opt_state),
                                      "total": on_dev0(state)}
  return out


if __name__ == "__main__":
  main()
