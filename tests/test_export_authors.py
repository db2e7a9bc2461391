"""The authors' layout (`mergevq_jax.export.authors`) against a PyTorch transcription of the
authors' MergeVQ (tests/authors_reference.py): a small G+R tokenizer with every parameter
randomised, mapped with to_authors, loaded strictly into the transcription built from
yaml_snippet, gives the same reconstructions, codes, source matrices and alignment-head
outputs; the round trip is bit-exact; bad tensor dicts and configs fail with every reason.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

import authors_reference as ref  # noqa: E402  (needs torch)
from conftest import load_config, random_tokenizer_params  # noqa: E402
from mergevq_jax.export import authors, native  # noqa: E402
from mergevq_jax.models import tome  # noqa: E402
from mergevq_jax.models.tokenizer import Tokenizer, jit_method  # noqa: E402

BATCH = 4


def small_gr_config():
  """tokenizer_tiny shrunk further, G+R code paths kept: CNN stem with three levels (a
  channel change -> 1x1 shortcut, two stride-2 convs), ToMe over 4 blocks (L=64 -> K=36),
  decoder with extra ResBlocks, AdaGN, depth-to-space, 'layer3' alignment head (hidden
  4 x width, as theirs), learned source recovery (dropped by the export)."""
  c = load_config("tokenizer_tiny")
  m = c.model
  m.image_size = 32
  m.ch = 32
  m.ch_mult = (1, 1, 2)      # /4 -> 8 x 8 tokens, width 64
  m.num_res_blocks = 1
  m.num_res_extra = 1
  m.num_layers = 4
  m.num_heads = 4
  m.decoder_num_heads = 4
  m.num_keep = 36
  m.align_head = "layer3"
  m.align_hidden = 4 * 64
  m.align_dim = 48
  return c


@pytest.fixture(scope="module")
def gr():
  """(config, random native params, JAX model holding them)."""
  config = small_gr_config()
  model = nnx.eval_shape(lambda: Tokenizer(config, rngs=nnx.Rngs(0)))
  params = random_tokenizer_params(model)
  native.load_params(model, params)
  return config, params, model


def build_reference(config, params):
  """Their model from yaml_snippet's init_args, weights loaded with strict=True."""
  section = yaml.safe_load(authors.yaml_snippet(config))["model"]
  assert section["class_path"] == "taming.models.lfqgan_rep.MergeVQModel"
  theirs = ref.MergeVQModel(**section["init_args"]).eval()
  tensors = authors.to_authors(params, config)
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
  return theirs, tensors


def small_r_config():
  """An R-shaped tokenizer: ViT encoder (patch 4 = 2^(len(ch_mult) - 1), width 96, 6 heads)
  with a 64-wide 4-head decoder (their num_heads / head_dim pair) and the G variant's
  'layer2_ln' alignment head; L=16 -> K=9 over 2 blocks. Platform 'gpu' selects XLA's
  own conv ops (the G+R test runs the 'cpu' kernels of `mergevq_jax.ops`); nothing else
  differs on the CPU backend, and it compiles faster."""
  c = small_gr_config()
  c.platform = "gpu"
  m = c.model
  m.image_size = 16
  m.encoder_type = "vit"
  m.patch_size = 4
  m.width = 96
  m.num_heads = 6
  m.num_layers = 2
  m.num_keep = 9
  m.keep_candidates = (9, 16)
  m.keep_probs = (0.5, 0.5)
  m.align_head = "layer2_ln"
  m.align_hidden = 4 * 96
  m.recovery.enabled = False
  return c


def check_parity(config, params, model):
  """Both models on the same random images: reconstructions, codes, source matrices and
  alignment-head outputs. Returns the largest reconstruction difference."""
  torch.manual_seed(0)
  theirs, tensors = build_reference(config, params)
  assert set(tensors) == set(theirs.state_dict())
  size, keep = config.model.image_size, config.model.num_keep
  images = np.random.default_rng(1).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)
  graphdef, state = nnx.split(model)
  rec, enc = jit_method(graphdef, "reconstruct")(state, jnp.asarray(images), num_keep=keep)
  head = jax.jit(lambda st, cls: nnx.merge(graphdef, st).align_head(cls))(state, enc.cls)
  ours_rec = np.asarray(rec).transpose(0, 3, 1, 2)
  ours_codes = np.asarray(enc.indices).reshape(-1)
  ours_source = np.asarray(enc.source_matrix())

  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    quant, _, codes, _ = theirs.encode(x)
    their_source = theirs.encoder.attn._tome_info["source"][:, 1:, 1:].numpy()
    their_rec = theirs.decode(quant).numpy()
    their_head = theirs.encoder(x, return_head=True).numpy()

  np.testing.assert_array_equal(their_source, ours_source)
  same = np.mean(codes.numpy() == ours_codes)
  assert same >= 0.999, f"codes agree on {same:.4%} of {ours_codes.size} tokens"
  diff = np.abs(their_rec - ours_rec).max()
  assert diff <= 1e-4, diff
  assert np.abs(their_head - np.asarray(head)).max() <= 1e-4
  # not a trivial agreement: merging happened and the outputs vary
  assert ours_source.sum(-1).max() > 1 and ours_rec.std() > 0.1
  return diff


def test_gr_reconstruction_codes_source_and_head_match_the_authors(gr):
  config, params, model = gr
  assert authors.authors_schedule(4, 64, 36) == list(model.schedule(36)) == [10, 8, 6, 4]
  check_parity(config, params, model)


@pytest.mark.parametrize("view", [24])
def test_alignment_view_merges_like_the_authors(gr, view):
  """On an alignment view of another size (24 px: 36 tokens against 64 at 32 px) the
  authors' encoder applies K's r list [10, 8, 6, 4] capped at half the tokens per block
  ([10, 8, 6, 4] -> 8 kept); `align` with the default model.align_merge='same_r' gives
  their head output (16 px, capped to [8, 4, 2, 1], agreed to 6.9e-7 as well).
  'same_ratio' (the rule before the option existed) keeps K/L and differs."""
  config, params, model = gr
  assert config.model.align_merge == "same_r"
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (BATCH, view, view, 3)).astype(np.float32)
  theirs, _ = build_reference(config, params)
  with torch.no_grad():
    want = theirs.encoder(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                          return_head=True).numpy()
  graphdef, state = nnx.split(model)
  ours = np.asarray(jax.jit(lambda st, v: nnx.merge(graphdef, st).align(v, 36))(state, x))
  diff = np.abs(ours - want).max()
  print(f"\nalign at {view} px vs the authors: {diff:.2e}")
  assert diff <= 1e-5 * max(1.0, float(np.abs(want).max()))
  other = small_gr_config()
  other.model.align_merge = "same_ratio"
  model2 = nnx.eval_shape(lambda: Tokenizer(other, rngs=nnx.Rngs(0)))
  native.load_params(model2, params)
  graphdef2, state2 = nnx.split(model2)
  ratio = np.asarray(jax.jit(lambda st, v: nnx.merge(graphdef2, st).align(v, 36))(state2, x))
  assert np.abs(ratio - want).max() > 1e-3


def test_r_shaped_encoder_and_layer2_ln_head_match_the_authors():
  config = small_r_config()
  args = yaml.safe_load(authors.yaml_snippet(config))["model"]["init_args"]["ddconfig"]
  assert (args["isotropic"], args["num_heads"], args["head_dim"], args["dist_head"]) == \
      (96, 4, 16, True)
  model = nnx.eval_shape(lambda: Tokenizer(config, rngs=nnx.Rngs(0)))
  params = random_tokenizer_params(model)
  native.load_params(model, params)
  check_parity(config, params, model)


def test_round_trip_is_bit_exact(gr):
  config, params, _ = gr
  tensors = authors.to_authors(params, config)
  back = authors.from_authors(tensors, config)
  dropped = {k for k in params if k.startswith("recovery.")}
  assert dropped and set(back) == set(params) - dropped
  for k, v in back.items():
    assert v.dtype == params[k].dtype and v.shape == params[k].shape, k
    np.testing.assert_array_equal(v, params[k], err_msg=k)
  # keep_native_only carries recovery.* through (their strict=False loaders ignore it)
  kept = authors.to_authors(params, config, keep_native_only=True)
  assert set(kept) - set(tensors) == {"mergevq_jax." + k for k in dropped}
  back = authors.from_authors(kept, config)
  assert set(back) == set(params)
  for k, v in back.items():
    np.testing.assert_array_equal(v, params[k], err_msg=k)
  # torch tensors are accepted too
  back = authors.from_authors({k: torch.from_numpy(v) for k, v in tensors.items()}, config)
  np.testing.assert_array_equal(back["encoder.blocks.1.attn.qkv.kernel"],
                                params["encoder.blocks.1.attn.qkv.kernel"])


def test_from_authors_lists_every_missing_extra_and_misshaped_key(gr):
  config, params, _ = gr
  tensors = dict(authors.to_authors(params, config))
  del tensors["encoder.attn.blocks.0.attn.qkv.weight"]
  del tensors["decoder.up.0.block.0.conv1.weight"]
  tensors["decoder.attn.blocks.9.ls1.gamma"] = np.zeros(64, np.float32)
  tensors["encoder.attn.cls_token"] = np.zeros((1, 64), np.float32)
  tensors["encoder.conv_out.weight"] = tensors["encoder.conv_out.weight"][:, :, 0, 0]
  with pytest.raises(ValueError) as e:
    authors.from_authors(tensors, config)
  msg = str(e.value)
  assert msg.startswith("5 tensor(s) do not match"), msg
  for line in ("missing: encoder.attn.blocks.0.attn.qkv.weight [192, 64]",
               "missing: decoder.up.0.block.0.conv1.weight [32, 32, 3, 3]",
               "unexpected: decoder.attn.blocks.9.ls1.gamma [64]",
               "wrong shape: encoder.attn.cls_token is [1, 64], expected [1, 1, 64]",
               "wrong shape: encoder.conv_out.weight is [18, 64], expected [18, 64, 1, 1]"):
    assert line in msg, msg
  # and the native side
  bad = dict(params)
  del bad["decoder.norm_out.scale"]
  bad["encoder.extra.kernel"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"(?s)2 tensor\(s\).*missing: decoder.norm_out.scale "
                                       r"\[32\].*unexpected: encoder.extra.kernel \[3\]"):
    authors.to_authors(bad, config)


def test_from_authors_reads_a_full_checkpoint_and_its_ema(gr):
  config, params, _ = gr
  tensors = authors.to_authors(params, config)
  # a Lightning checkpoint of theirs also holds the loss, the teacher and the EMA shadows
  ckpt = {k: np.zeros_like(v) for k, v in tensors.items()}
  ckpt.update({authors.ema_key(k): v for k, v in tensors.items()})
  ckpt.update({"loss.discriminator.main.0.weight": np.zeros((64, 3, 4, 4), np.float32),
               "loss.perceptual_loss.lin0.model.1.weight": np.zeros((1, 64, 1, 1), np.float32),
               "dist_model.embeddings.cls_token": np.zeros((1, 1, 768), np.float32),
               "model_ema.decay": np.float32(0.999), "model_ema.num_updates": np.int32(-1)})
  back = authors.from_authors(ckpt, config, ema=True)
  for k, v in back.items():
    np.testing.assert_array_equal(v, params[k], err_msg=k)
  assert not any(np.any(v) for v in authors.from_authors(ckpt, config).values())


def test_mergear_and_unsupported_configs_fail_clearly():
  mergear = load_config("mergear_tiny")
  for fn in (lambda: authors.to_authors({}, mergear), lambda: authors.from_authors({}, mergear),
             lambda: authors.yaml_snippet(mergear), lambda: authors.check_supported(mergear)):
    with pytest.raises(ValueError, match="the authors' code has no MergeAR; use --layout=native"):
      fn()
  assert not authors.supported(mergear)
  c = small_gr_config()
  assert authors.supported(c) and authors.supported(c.to_dict())
  c.model.num_keep = 40
  c.model.decoder_num_heads = 2
  c.model.align_hidden = 128
  c.model.proportional_attention = False
  found = authors.problems(c)
  assert len(found) == 4, found
  with pytest.raises(ValueError) as e:
    authors.to_authors({}, c)
  for part in ("num_keep=40 is not a square", "heads: encoder 4 of width 64, decoder 2",
               "align_hidden=128", "proportional_attention=False"):
    assert part in str(e.value)
  # a merge schedule their check_parse_r / parse_r does not reproduce
  c = small_gr_config()
  c.model.num_layers = 3
  assert any("merge schedule" in p and "[13, 10, 5]" in p and "[14, 9, 5]" in p
             for p in authors.problems(c)), authors.problems(c)


def test_schedules_restated_without_jax_agree():
  """authors._ours_schedule == tome.merge_schedule; authors.authors_schedule == the
  transcription's check_parse_r / parse_r with bipartite_soft_matching's cap."""
  for n, L in ((2, 16), (3, 64), (4, 64), (12, 256), (12, 1024)):
    for k in range(1, L + 1, 1 if L <= 64 else 7):
      try:
        ours = list(tome.merge_schedule(n, L, k))
      except ValueError:
        continue
      assert authors._ours_schedule(n, L, k) == ours, (n, L, k)
      merge = L - k
      listed = ref.parse_r(n, (ref.check_parse_r(n, merge, L, -0.5), -0.5), merge)
      left, capped = L, []
      for r in listed:
        r = max(0, min(r, left // 2))
        capped.append(r)
        left -= r
      assert authors.authors_schedule(n, L, k) == capped, (n, L, k)


def test_yaml_matches_the_authors_configs():
  """Our variant configs give the ddconfig values of their configs/gpu_s1 files (commit
  52671985): imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml, ..._G_d64_8gpu_100ep.yaml and
  ..._R_vitb_d64_8gpu_270ep.yaml (R: our K=36 is the paper's; theirs trains K=64)."""
  common = {"double_z": False, "z_channels": 18, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 64, "num_res_blocks": 4, "num_att_blocks": 12,
            "num_classes": 768, "num_res_extra": 1, "model_path": None}
  want = {
      "tokenizer_gr": {**common, "ch_mult": [1, 1, 2, 4, 8], "num_heads": 8,
                       "dist_head": "layer3", "merge_num": 112,
                       "cand_distribution": "gaussian-6"},
      "tokenizer_g": {**common, "ch_mult": [1, 2, 4, 8], "num_heads": 8, "dist_head": True,
                      "merge_num": 768, "cand_distribution": "gaussian-9"},
      "tokenizer_r": {**common, "ch_mult": [1, 1, 2, 4, 8], "num_heads": 8, "head_dim": 64,
                      "isotropic": 768, "dist_head": "layer3", "merge_num": 220},
  }
  for name, dd in want.items():
    config = load_config(name)
    args = yaml.safe_load(authors.yaml_snippet(config))["model"]["init_args"]
    got = args["ddconfig"]
    assert got == dd, (name, got)
    assert args["k2lconfig"] == {"learn_source": False}
    assert args["n_embed"] == 2 ** 18 and args["embed_dim"] == 18
    assert args["use_ema"] is False and args["learning_rate"] == 1e-4
    assert args["lossconfig"]["params"]["cls_loss_weight"] == config.loss.align_weight
  # the full G+R map: key and parameter counts of their encoder / decoder
  entries = authors.key_map(load_config("tokenizer_gr"))
  count = lambda p: sum(math.prod(e.authors_shape) for k, e in entries.items()
                        if k.startswith(p))
  assert len(entries) == 686
  assert abs(count("encoder.") - count("encoder.dist_head") - 62.7e6) / 62.7e6 < 0.02
  assert abs(count("decoder.") - 83.4e6) / 83.4e6 < 0.02
