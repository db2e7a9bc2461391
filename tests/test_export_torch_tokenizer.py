"""PyTorch tokenizer (mergevq_jax.export.torch_modules.tokenizer) against the JAX model, on
shrunken G+R-, G- and R-like configs with every parameter random, for two K each: the
native parameter tree loads with strict=True; reconstructions agree to 1e-4; code
indices agree except where a latent is within float noise of 0 (such ties are counted);
owners, sizes and source matrices are equal; the [CLS] feature, alignment head, LFQ
losses and source-recovery logits agree and the recovered owners are equal; input checks
raise; and the package imports and reconstructs with JAX blocked.

The cases between them take every branch that differs between the variants: CNN stem
(G+R, G) and patch stem (R); align heads 'layer3', 'layer2_ln' and none; source recovery
on and off; proportional attention on and off; 'exact' and 'bit_groups' batch entropy.
Images are a batch of [uniform noise, a real photo] (scikit-image's astronaut, when
installed) in NCHW for torch and NHWC for JAX.

Run with -s to see the measured differences and tie counts.
"""
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.bench_utils import load_config
from mergevq_jax.export import native
from mergevq_jax.export.torch_modules.tokenizer import MergeVQTokenizer
from mergevq_jax.models.tokenizer import Tokenizer

from conftest import ROOT, random_tokenizer_params

RECON_TOL = 1e-4
TIE_TOL = 2e-5      # |z| below this counts as a tie at zero (LFQ's sign is then float noise)
MIN_EQUAL = 0.999   # fraction of tokens whose code index must agree, ties excepted
# XLA:CPU compiles the ToMe encoder slowly (~4 s per merging block at full optimisation);
# the parity checks do not need optimised code.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def case_config(name: str):
  """Tiny configs of each variant's shape: 16 x 16 images, an 8 x 8 grid (L = 64 tokens),
  3 ToMe blocks, K = 36 (the tiny config's, with its candidates)."""
  config = load_config("tokenizer_tiny", "cpu")
  m = config.model
  m.image_size = 16
  m.ch_mult = (1, 2)             # /2: two levels, one stride-2 conv, one upsampling
  m.num_layers = 3
  if name == "G":                # G: its own channel ladder, the 'layer2_ln' head; here
    m.ch_mult = (2, 2)           # also no recovery and the bit-group entropy
    m.align_head = "layer2_ln"
    m.recovery.enabled = False
    config.quantizer.entropy_mode = "bit_groups"
    config.quantizer.group_size = 5   # 18 bits = 5 + 5 + 5 + 3: a short last group
  elif name == "R":              # R: ViT patch stem; here also no alignment head and
    m.encoder_type = "vit"       # plain (non-proportional) attention
    m.patch_size = 2
    m.width = 64
    m.align_head = ""
    m.proportional_attention = False
  return config


CASES = [("G+R", 36), ("G+R", 16), ("G", 25), ("R", 20)]   # every variant, K = L/2 .. L/4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """Two cores shared with other work: torch's thread pool only adds contention here."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def models(name: str):
  """(config, JAX model, torch model) with the same random parameters. The JAX model is
  built abstractly and filled (an eager init compiles every initializer)."""
  config = case_config(name)
  abstract = nnx.eval_shape(lambda: Tokenizer(config, rngs=nnx.Rngs(0)))
  jm = native.load_params(abstract, random_tokenizer_params(abstract))
  tm = MergeVQTokenizer(json.loads(json.dumps(config.to_dict())))   # as read from config.json
  tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in native.flat_params(jm).items()},
                     strict=True)
  return config, jm, tm.eval()


@functools.lru_cache(maxsize=None)
def photo():
  """A real photograph as a square center crop (PIL image), or None when scikit-image's
  sample photos are not installed."""
  try:
    from PIL import Image
    from mergevq_jax.data.sources import SampleImages
    samples = SampleImages()
  except (ImportError, ValueError):
    return None
  image = Image.fromarray(samples[samples.names.index("astronaut")
                                  if "astronaut" in samples.names else 0]["image"])
  side = min(image.size)
  left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
  return image.crop((left, top, left + side, top + side))


@functools.lru_cache(maxsize=None)
def images(size: int) -> np.ndarray:
  """(2, size, size, 3) float32 NHWC in [-1, 1]: uniform noise and a real photo (a smooth
  random field when no photo is installed)."""
  rng = np.random.default_rng(1)
  noise = rng.uniform(-1, 1, (size, size, 3))
  image = photo()
  if image is not None:
    from PIL import Image
    second = np.asarray(image.resize((size, size), Image.BICUBIC), np.float32) / 127.5 - 1.0
  else:
    second = np.kron(rng.uniform(-1, 1, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
  return np.stack([noise, second]).astype(np.float32)


def compiled(fn, *args, static=()):
  """fn(*args) jit-compiled with FAST_COMPILE, called on the non-static args."""
  lowered = jax.jit(fn, static_argnums=static).lower(*args)
  dynamic = [a for i, a in enumerate(args) if i not in static]
  return lowered.compile(compiler_options=FAST_COMPILE)(*dynamic)


def jax_outputs(variant: str, x: np.ndarray, num_keep: int) -> dict:
  """The JAX model's encode (+ S, + alignment head on [CLS], + source recovery on its
  tokens) and reconstruction, as numpy arrays."""
  _, jm, _ = models(variant)
  graphdef, state = nnx.split(jm)

  def encode(state, x, num_keep):
    model = nnx.merge(graphdef, state)
    enc = model.encode(x, num_keep)
    out = {"tokens": enc.tokens, "indices": enc.indices, "owner": enc.owner, "cls": enc.cls,
           "z": enc.z, "size": enc.size, "S": enc.source_matrix(),
           **{f"lfq.{k}": v for k, v in enc.lfq._asdict().items() if k not in
              ("quantized", "indices")}}
    if model.align_head is not None:
      out["align"] = model.align_head(enc.cls)
    if model.recovery is not None:
      rec = model.recover_source(enc.tokens)
      out["rec.logits"], out["rec.owner"] = rec.logits, rec.owner
    return out

  out = compiled(encode, state, jnp.asarray(x), num_keep, static=(2,))
  out = {k: np.asarray(v) for k, v in out.items()}
  # Decode the unmerged grid S^T Z_K (K = L tokens, identity source): one compilation of
  # the decoder serves every K.
  full = np.take_along_axis(out["tokens"], out["owner"][..., None], axis=1)
  out["recon"] = np.asarray(jax_decoder(variant, x.shape[0])(jnp.asarray(full)))
  return out


@functools.lru_cache(maxsize=None)
def jax_decoder(variant: str, batch: int):
  """The JAX `Tokenizer.decode` of (batch, L, d) tokens with the identity source,
  compiled once per variant."""
  _, jm, _ = models(variant)
  graphdef, state = nnx.split(jm)
  L = jm.num_tokens
  identity = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (batch, L))
  decode = lambda state, full: nnx.merge(graphdef, state).decode(full, identity)
  tokens = jax.ShapeDtypeStruct((batch, L, jm.config.model.z_channels), jnp.float32)
  return functools.partial(jax.jit(decode).lower(state, tokens).compile(
      compiler_options=FAST_COMPILE), state)


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def maxdiff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("variant, num_keep", CASES)
def test_parity_with_jax(variant, num_keep):
  config, jm, tm = models(variant)
  x = images(config.model.image_size)
  ref = jax_outputs(variant, x, num_keep)
  with torch.no_grad():
    recon, enc = tm.reconstruct(nchw(x), num_keep)
    from_jax_tokens = tm.decode(torch.from_numpy(ref["tokens"].copy()),
                                torch.from_numpy(ref["owner"].copy()))
    align = tm.align(nchw(x), num_keep) if tm.align_head is not None else None
    rec = (tm.recover_source(torch.from_numpy(ref["tokens"].copy())) if tm.recovery is not None
           else None)

  # Outputs are non-degenerate: parity of constants would prove little.
  assert np.all(np.isfinite(ref["recon"])) and ref["recon"].std() > 0.05
  assert ref["z"].std() > 0.1 and len(np.unique(ref["indices"])) > ref["indices"].size // 2
  assert np.all(ref["S"].sum(2) >= 1)      # every kept token owns a position

  # Merging: the same owners, sizes and source matrices, exactly.
  np.testing.assert_array_equal(enc.owner.numpy(), ref["owner"])
  np.testing.assert_array_equal(enc.source_matrix().numpy(), ref["S"])
  np.testing.assert_array_equal(enc.size.numpy(), ref["size"])
  assert enc.tokens.shape == (2, num_keep, 18) and enc.owner.dtype == torch.int64

  # LFQ codes: equal except at ties, i.e. a latent within float noise of zero.
  z_t = enc.z.numpy()
  tied = (np.abs(ref["z"]) < TIE_TOL) | (np.abs(z_t) < TIE_TOL)          # (B, K, d)
  equal = enc.indices.numpy() == ref["indices"]
  bits_differ = (z_t > 0) != (ref["z"] > 0)
  assert not np.any(bits_differ & ~tied), "a code bit differs away from a tie at zero"
  untied = ~tied.any(-1)
  assert equal[untied].mean() >= MIN_EQUAL

  # Reconstructions: the torch decoder on the JAX tokens, and end to end when the codes
  # agree (a tie that flips a bit changes the decoder input, legitimately).
  d_decode = maxdiff(nhwc(from_jax_tokens), ref["recon"])
  assert d_decode <= RECON_TOL
  d_recon = maxdiff(nhwc(recon), ref["recon"])
  if equal.all():
    assert d_recon <= RECON_TOL

  d_z, d_cls = maxdiff(z_t, ref["z"]), maxdiff(enc.cls.numpy(), ref["cls"])
  assert d_z <= 1e-4 and d_cls <= 1e-4
  for key in ("commit_loss", "per_token_entropy", "batch_entropy", "entropy_loss"):
    np.testing.assert_allclose(float(getattr(enc.lfq, key)), ref[f"lfq.{key}"], rtol=1e-3,
                               atol=1e-4, err_msg=key)
  line = (f"{variant} K={num_keep}: recon {d_recon:.2e} (decode of JAX tokens {d_decode:.2e}), "
          f"z {d_z:.2e}, cls {d_cls:.2e}, min|z| {np.abs(ref['z']).min():.1e}, "
          f"tied bits {int(tied.sum())}/{tied.size}, tokens with a tie "
          f"{int((~untied).sum())}/{untied.size}, codes equal {equal.mean():.4f}")

  assert (align is None) == ("align" not in ref)
  if align is not None:
    d_align = maxdiff(align.numpy(), ref["align"])
    assert d_align <= 1e-4 * max(1.0, float(np.abs(ref["align"]).max()))
    line += f", align {d_align:.2e}"

  assert (rec is None) == ("rec.logits" not in ref)
  if rec is not None:
    logits = ref["rec.logits"]
    d_rec = maxdiff(rec.logits.numpy(), logits)
    assert d_rec <= 1e-4 * max(1.0, float(np.abs(logits).max()))
    top2 = np.sort(logits, axis=1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) < 1e-4 * max(1.0, float(np.abs(logits).max()))
    same = rec.owner.numpy() == ref["rec.owner"]
    assert np.all(same | near)
    line += (f", recovery logits {d_rec:.2e}, owners equal {same.mean():.4f} "
             f"(near-tied argmax {int(near.sum())})")
  print("\n" + line)


def test_align_at_another_resolution():
  """align() on 12 x 12 views: a 6 x 6 grid merged with K=36's r list, capped (same_r)."""
  config, jm, tm = models("G")
  x = images(12)
  graphdef, state = nnx.split(jm)
  ref = np.asarray(compiled(lambda s, v: nnx.merge(graphdef, s).align(v, 36), state,
                            jnp.asarray(x)))
  with torch.no_grad():
    out = tm.align(nchw(x), 36).numpy()
  assert out.shape == (2, config.model.align_dim)
  d = maxdiff(out, ref)
  print(f"\nalign 12x12: {d:.2e}")
  assert d <= 1e-4 * max(1.0, float(np.abs(ref).max()))


# ---------------------------------------------------------------------- torch-only checks


@pytest.fixture(scope="module")
def tiny_dict():
  return json.loads(json.dumps(load_config("tokenizer_tiny", "cpu").to_dict()))


def test_state_dict_is_the_native_tree(tiny_dict):
  """Names and shapes equal the JAX model's; strict loading names a missing key."""
  abstract = nnx.eval_shape(lambda: Tokenizer(load_config("tokenizer_tiny", "cpu"),
                                              rngs=nnx.Rngs(0)))
  expected = native.expected_shapes(abstract)
  tm = MergeVQTokenizer(tiny_dict)
  got = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  assert got == expected
  params = {k: torch.zeros(s) for k, s in expected.items()}
  del params["decoder.blocks.0.attn.qkv.kernel"]
  with pytest.raises(RuntimeError, match=r"Missing key\(s\).*decoder\.blocks\.0\.attn\.qkv\.kernel"):
    tm.load_state_dict(params, strict=True)
  params["decoder.blocks.0.attn.qkv.kernel"] = torch.zeros(1)
  with pytest.raises(RuntimeError, match="size mismatch"):
    tm.load_state_dict(params, strict=True)


def test_input_checks(tiny_dict):
  tm = MergeVQTokenizer(tiny_dict)
  for bad, match in [(torch.zeros(3, 64, 64), "rank-4"), (torch.zeros(1, 64, 64, 3), "axis 1"),
                     (torch.zeros(1, 3, 32, 32), "64x64"),
                     (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating point"),
                     (np.zeros((1, 3, 64, 64), np.float32), "torch tensor")]:
    with pytest.raises(ValueError, match=match):
      tm.encode(bad, 36)
  for k, match in [(65, r"\[1, L=64\]"), (4, "not reachable"), (0, r"\[1, L")]:
    with pytest.raises(ValueError, match=match):
      tm.schedule(k)
  tokens, owner = torch.ones(2, 36, 18), torch.zeros(2, 64, dtype=torch.int64)
  with pytest.raises(ValueError, match="tokens must be"):
    tm.decode(tokens[..., :4], owner)
  with pytest.raises(ValueError, match="source covers"):
    tm.decode(tokens, owner[:, :10])
  with pytest.raises(ValueError, match="rows"):
    tm.decode(tokens, torch.zeros(2, 20, 64))
  with pytest.raises(ValueError, match="integers"):
    tm.decode_indices(tokens[..., 0], owner)
  for path, value, match in [("model.num_heads", 5, "num_heads"),
                             ("model.encoder_type", "mlp", "encoder_type"),
                             ("model.image_size", 60, "divisible"),
                             ("model.num_keep", 2, "not reachable"),
                             ("dtype", "float16", "dtype"),
                             ("quantizer.entropy_mode", "x", "entropy_mode")]:
    cfg = json.loads(json.dumps(tiny_dict))
    node = cfg
    *parents, key = path.split(".")
    for p in parents:
      node = node[p]
    node[key] = value
    with pytest.raises(ValueError, match=match):
      MergeVQTokenizer(cfg)
  cfg = json.loads(json.dumps(tiny_dict))
  del cfg["model"]["recovery"]["width"]
  with pytest.raises(ValueError, match="model.recovery.width"):
    MergeVQTokenizer(cfg)


def test_decode_paths_agree(tiny_dict):
  """Owner indices, the dense source matrix and code indices decode to the same images;
  K = L keeps every token in place."""
  tm = MergeVQTokenizer(tiny_dict).eval()
  x = torch.rand(2, 3, 64, 64) * 2 - 1
  with torch.no_grad():
    out, enc = tm.reconstruct(x, 36)
    by_matrix = tm.decode(enc.tokens, enc.source_matrix())
    by_indices = tm.decode_indices(enc.indices, enc.owner)
    full = tm.encode(x, 64)
  torch.testing.assert_close(by_matrix, out, rtol=0, atol=0)
  torch.testing.assert_close(by_indices, out, rtol=0, atol=0)
  assert out.shape == (2, 3, 64, 64) and tm.grid == (8, 8) and tm.num_tokens == 64
  assert torch.equal(enc.source_matrix().sum(1), torch.ones(2, 64))
  assert torch.equal(enc.source_matrix().sum(2), enc.size)
  assert torch.equal(full.owner, torch.arange(64).expand(2, 64))


def test_save_and_from_pretrained(tiny_dict, tmp_path):
  tm = MergeVQTokenizer(tiny_dict).eval()
  tm.save_pretrained(str(tmp_path))
  loaded = MergeVQTokenizer.from_pretrained(str(tmp_path))
  assert loaded.config == tiny_dict and not loaded.training
  x = torch.rand(1, 3, 64, 64) * 2 - 1
  with torch.no_grad():
    assert torch.equal(loaded.reconstruct(x, 25)[0], tm.reconstruct(x, 25)[0])


BLOCKED = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'ml_collections', 'orbax'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import torch
from mergevq_jax.export.torch_modules.tokenizer import MergeVQTokenizer
model = MergeVQTokenizer(json.loads(sys.argv[1])).eval()
with torch.no_grad():
  out, enc = model.reconstruct(torch.rand(1, 3, 64, 64) * 2 - 1, 36)
assert out.shape == (1, 3, 64, 64) and enc.tokens.shape == (1, 36, 18)
assert not any(m.split('.')[0] in ('jax', 'flax') for m in sys.modules)
# besides the port, only the pure-Python modules shared with the JAX models may load
allowed = ('mergevq_jax', 'mergevq_jax.export', 'mergevq_jax.export.export_dir',
           'mergevq_jax.export.authors', 'mergevq_jax.models', 'mergevq_jax.models.hparams',
           'mergevq_jax.models.merge_schedule', 'mergevq_jax.models.ar',
           'mergevq_jax.models.ar.hparams', 'mergevq_jax.models.ar.cache_layout')
leaked = sorted(m for m in sys.modules if m.startswith('mergevq_jax')
                and not m.startswith('mergevq_jax.export.torch_modules') and m not in allowed)
assert not leaked, leaked
print('ok')
"""


def test_imports_and_runs_without_jax(tiny_dict):
  out = subprocess.run([sys.executable, "-c", BLOCKED, json.dumps(tiny_dict)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
