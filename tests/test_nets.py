"""Frozen nets (LPIPS-VGG, DINOv2) equal independent PyTorch definitions with the same
random weights loaded from files in the public key layouts; bad files give clear errors.

The PyTorch models below are written from the papers / public layouts, not from our code.
Tests that need torch (or safetensors) skip when it is not installed.
"""
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mergevq_jax.models.layers import count_params
from mergevq_jax.nets import (DinoV2, LPIPS, convert, dinov2, load_dinov2, load_lpips, vgg_lpips,
                              weights)

ATOL = 1e-4


@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  return torch


def _save(torch, state, path):
  """state: {key: torch tensor} -> .pth / .safetensors / .npz by the file extension."""
  path = str(path)
  if path.endswith(".safetensors"):
    st = pytest.importorskip("safetensors.torch")
    st.save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
  elif path.endswith(".npz"):
    np.savez(path, **{k: v.detach().numpy() for k, v in state.items()})
  else:
    torch.save(state, path)
  return path


# ============================================================================= LPIPS

def _torch_lpips(torch):
  """torchvision-style VGG16 `features` + lpips v0.1 linear layers, in plain torch.nn."""
  nn = torch.nn
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

  class LinLayer(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))

  class RefLPIPS(nn.Module):
    def __init__(self):
      super().__init__()
      mods, cin = [], 3
      for v in cfg:
        if v == "M":
          mods.append(nn.MaxPool2d(2, 2))
        else:
          mods += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
          cin = v
      self.features = nn.Sequential(*mods)
      for k, c in enumerate([64, 128, 256, 512, 512]):
        setattr(self, f"lin{k}", LinLayer(c))
      self.register_buffer("shift", torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1))
      self.register_buffer("scale", torch.tensor([.458, .448, .450]).view(1, 3, 1, 1))

    def taps(self, x):
      out = []
      for i, m in enumerate(self.features):
        x = m(x)
        if i in (3, 8, 15, 22, 29):   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
          out.append(x.clone())
        if i == 29:
          break
      return out

    def forward(self, x, y):  # NCHW in [-1, 1]
      fx = self.taps((x - self.shift) / self.scale)
      fy = self.taps((y - self.shift) / self.scale)
      total = 0
      for k, (a, b) in enumerate(zip(fx, fy)):
        a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
        d = getattr(self, f"lin{k}").model[1]((a - b) ** 2)
        total = total + d.mean(dim=(2, 3))
      return total[:, 0]

  torch.manual_seed(0)
  model = RefLPIPS().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith("features") and name.endswith("weight"):
        nn.init.kaiming_normal_(p, nonlinearity="relu")
      elif name.startswith("features"):
        p.uniform_(-0.1, 0.1)
      else:
        p.uniform_(0.0, 1.0)   # lin weights are non-negative
  return model


@pytest.fixture(scope="module")
def lpips_ref(torch):
  return _torch_lpips(torch)


def _lpips_state(model):
  """torchvision vgg16 keys + lpips vgg.pth keys (no buffers)."""
  return {k: v for k, v in model.state_dict().items() if k not in ("shift", "scale")}


@pytest.fixture(scope="module")
def lpips_images():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  return x, y


def _ref_lpips(torch, model, x, y):
  with torch.no_grad():
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    return model(t(x), t(y)).numpy()


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_lpips_matches_torch(torch, lpips_ref, lpips_images, tmp_path, ext):
  path = _save(torch, _lpips_state(lpips_ref), tmp_path / f"lpips{ext}")
  ours = load_lpips(path)
  x, y = lpips_images
  want = _ref_lpips(torch, lpips_ref, x, y)
  got = np.asarray(ours(jnp.asarray(x), jnp.asarray(y)))
  print(f"LPIPS {ext}: max abs diff {np.abs(got - want).max():.2e} (values {want})")
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
  assert np.all(want > 1e-3)


def test_lpips_package_key_names(torch, lpips_ref, lpips_images, tmp_path):
  """lpips.LPIPS's own state dict: net.sliceN.<feature index>, linK and lins.K, buffers."""
  state = {}
  slices = [(1, 0, 4), (2, 4, 9), (3, 9, 16), (4, 16, 23), (5, 23, 30)]
  for k, v in _lpips_state(lpips_ref).items():
    if k.startswith("features."):
      idx = int(k.split(".")[1])
      n = next(n for n, lo, hi in slices if lo <= idx < hi)
      state[f"net.slice{n}.{k[len('features.'):]}"] = v
    else:
      state[k] = v
      state["lins." + k[3] + k[4:]] = v   # lin0.model... -> lins.0.model...
  state["scaling_layer.shift"] = lpips_ref.shift
  state["scaling_layer.scale"] = lpips_ref.scale
  ours = load_lpips(_save(torch, state, tmp_path / "lpips_full.pth"))
  x, y = lpips_images
  np.testing.assert_allclose(np.asarray(ours(x, y)), _ref_lpips(torch, lpips_ref, x, y),
                             atol=ATOL, rtol=0)


def test_lpips_convert_cli_merges_public_files(torch, lpips_ref, lpips_images, tmp_path):
  state = _lpips_state(lpips_ref)
  vgg = {k: v for k, v in state.items() if k.startswith("features.")}
  vgg["classifier.0.weight"] = torch.zeros(8, 4)   # stands in for torchvision's classifier
  lin = {k: v for k, v in state.items() if k.startswith("lin")}
  vgg_path = _save(torch, vgg, tmp_path / "vgg16.pth")
  lin_path = _save(torch, lin, tmp_path / "vgg.pth")
  out = tmp_path / "lpips_vgg.npz"
  assert convert.main(["lpips", "--vgg", vgg_path, "--lin", lin_path, "--out", str(out)]) == 0
  assert set(np.load(out).files) == set(vgg_lpips.expected_shapes())
  ours = load_lpips(out)
  x, y = lpips_images
  np.testing.assert_allclose(np.asarray(ours(x, y)), _ref_lpips(torch, lpips_ref, x, y),
                             atol=ATOL, rtol=0)


def _random_lpips_npz(path, negative=False):
  rng = np.random.default_rng(1)
  state = {k: rng.standard_normal(s).astype(np.float32) * (0.1 if k.startswith("f") else 1)
           for k, s in vgg_lpips.expected_shapes().items()}
  for k in state:
    if k.startswith("lin"):
      state[k] = np.abs(state[k]) * (-1 if negative else 1)
  np.savez(path, **state)
  return state


def test_lpips_identity_zero_and_positive(tmp_path):
  _random_lpips_npz(tmp_path / "w.npz")
  model = load_lpips(tmp_path / "w.npz")
  x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3), minval=-1, maxval=1)
  y = jnp.clip(x + 0.2 * jax.random.normal(jax.random.key(1), x.shape), -1, 1)
  f = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))
  graphdef, state = nnx.split(model)
  np.testing.assert_allclose(np.asarray(f(state, x, x)), 0.0, atol=1e-7)
  d = np.asarray(f(state, x, y))
  assert d.shape == (3,) and np.all(d > 1e-4)
  np.testing.assert_allclose(d, np.asarray(f(state, y, x)), rtol=1e-5)
  assert count_params(model) == 14_716_160   # VGG16 features + 1472 lin weights


def test_lpips_module_and_input_errors():
  model = LPIPS(rngs=nnx.Rngs(0))
  assert model.convs[0].kernel.get_metadata()["logical_axes"] == (None, None, "conv_in",
                                                                  "conv_out")
  with pytest.raises(ValueError, match="equal shape"):
    model(jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 16, 3)))
  with pytest.raises(ValueError, match="16x16"):
    model(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


def test_lpips_bad_files(tmp_path):
  missing = tmp_path / "nope.pth"
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    load_lpips(missing)
  state = _random_lpips_npz(tmp_path / "ok.npz")

  def write(name, s):
    np.savez(tmp_path / name, **s)
    return str(tmp_path / name)

  s = dict(state); del s["features.12.bias"]
  with pytest.raises(ValueError, match=r"missing.npz.*missing key.*'features\.12\.bias'"):
    load_lpips(write("missing.npz", s))
  s = dict(state); s["features.99.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(ValueError, match=r"unexpected key.*'features\.99\.weight'"):
    load_lpips(write("extra.npz", s))
  s = dict(state); s["lin3.model.1.weight"] = np.ones((1, 256, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"'lin3\.model\.1\.weight' has shape \(1, 256, 1, 1\), "
                                       r"expected \(1, 512, 1, 1\)"):
    load_lpips(write("shape.npz", s))
  _random_lpips_npz(tmp_path / "neg.npz", negative=True)
  with pytest.raises(ValueError, match="negative"):
    load_lpips(tmp_path / "neg.npz")
  (tmp_path / "junk.npz").write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="junk.npz"):
    load_lpips(tmp_path / "junk.npz")
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="unknown weight-file type"):
    load_lpips(tmp_path / "w.h5")


def test_torch_file_without_torch_says_how_to_fix(tmp_path, monkeypatch):
  (tmp_path / "w.pth").write_bytes(b"\x80\x02}q\x00.")
  monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
  with pytest.raises(ImportError, match=r"w\.pth.*pip install torch==2\.13\.0"):
    weights.read_state_dict(tmp_path / "w.pth")


def test_corrupt_torch_and_safetensors_files(torch, tmp_path):
  pytest.importorskip("safetensors")
  for name in ("bad.pth", "bad.safetensors"):
    (tmp_path / name).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=name):
      weights.read_state_dict(tmp_path / name)


# ============================================================================= DINOv2

def _torch_dinov2(torch, depth=2, dim=768, patch=14, grid=37, seed=0):
  """DINOv2 ViT in plain torch.nn with timm/Meta parameter names; `forward(x, rule)`
  resizes the position grid with F.interpolate the way transformers / timm / Meta do."""
  nn, F = torch.nn, torch.nn.functional
  heads, mlp = dim // 64, 4 * dim

  class LayerScale(nn.Module):
    def __init__(self):
      super().__init__()
      self.gamma = nn.Parameter(torch.ones(dim))

  class Attn(nn.Module):
    def __init__(self):
      super().__init__()
      self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
      b, n, _ = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
      a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
      return self.proj((a @ v).transpose(1, 2).reshape(b, n, dim))

  class Mlp(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))

  class BlockRef(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.attn, self.mlp, self.ls1, self.ls2 = Attn(), Mlp(), LayerScale(), LayerScale()

    def forward(self, x):
      x = x + self.attn(self.norm1(x)) * self.ls1.gamma
      return x + self.mlp(self.norm2(x)) * self.ls2.gamma

  class PatchEmbed(nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = nn.Conv2d(3, dim, patch, stride=patch)

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
      self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
      self.patch_embed = PatchEmbed()
      self.blocks = nn.ModuleList([BlockRef() for _ in range(depth)])
      self.norm = nn.LayerNorm(dim, eps=1e-6)

    def pos(self, g, rule):
      if g == grid:
        return self.pos_embed
      p = self.pos_embed[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
      if rule == "hf":
        p = F.interpolate(p, size=(g, g), mode="bicubic", align_corners=False)
      elif rule == "timm":
        p = F.interpolate(p, size=(g, g), mode="bicubic", antialias=True)
      else:
        sf = (g + 0.1) / grid
        p = F.interpolate(p, scale_factor=(sf, sf), mode="bicubic", align_corners=False)
      return torch.cat([self.pos_embed[:, :1], p.permute(0, 2, 3, 1).reshape(1, g * g, dim)], 1)

    def forward(self, x, rule):   # NCHW, returns all normalised tokens
      t = self.patch_embed.proj(x)
      g = t.shape[-1]
      t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t.flatten(2).transpose(1, 2)], 1)
      t = t + self.pos(g, rule)
      for blk in self.blocks:
        t = blk(t)
      return self.norm(t)

  torch.manual_seed(seed)
  model = ViT().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith("gamma"):
        p.uniform_(0.2, 1.0)
      elif name in ("cls_token", "pos_embed"):
        p.normal_(0, 1.0)
      else:
        p.normal_(0, 0.05)
  return model


def _hf_state(timm_state, depth):
  """timm names -> transformers Dinov2Model names (qkv split into query/key/value)."""
  out = {"embeddings.cls_token": timm_state["cls_token"],
         "embeddings.mask_token": torch_zeros_like(timm_state["cls_token"][0]),
         "embeddings.position_embeddings": timm_state["pos_embed"],
         "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
         "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
         "layernorm.weight": timm_state["norm.weight"], "layernorm.bias": timm_state["norm.bias"]}
  for i in range(depth):
    t, h = f"blocks.{i}.", f"encoder.layer.{i}."
    for part in ("weight", "bias"):
      q, k, v = timm_state[t + "attn.qkv." + part].chunk(3, dim=0)
      out[h + "attention.attention.query." + part] = q.clone()
      out[h + "attention.attention.key." + part] = k.clone()
      out[h + "attention.attention.value." + part] = v.clone()
      out[h + "attention.output.dense." + part] = timm_state[t + "attn.proj." + part]
      for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
        out[h + n + "." + part] = timm_state[t + n + "." + part]
    out[h + "layer_scale1.lambda1"] = timm_state[t + "ls1.gamma"]
    out[h + "layer_scale2.lambda1"] = timm_state[t + "ls2.gamma"]
  return out


def torch_zeros_like(t):
  return t.detach().clone().zero_()


@pytest.fixture(scope="module")
def dino_ref(torch):
  return _torch_dinov2(torch)


def _ref_tokens(torch, model, images, rule):
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return model(x, rule).numpy()


@pytest.mark.parametrize("layout, ext, size", [
    ("hf", ".safetensors", 56), ("timm", ".pth", 56), ("hf", ".pth", 70), ("timm", ".npz", 42)])
def test_dinov2_matches_torch(torch, dino_ref, tmp_path, layout, ext, size):
  state = dino_ref.state_dict()
  if layout == "hf":
    state = {"dinov2." + k: v for k, v in _hf_state(state, 2).items()}   # with an outer prefix
  else:
    state = dict(state, mask_token=torch.zeros(1, 768))
  path = _save(torch, state, tmp_path / f"dino_{layout}{ext}")
  ours = load_dinov2(path, image_size=size)
  assert len(ours.blocks) == 2 and ours.pos_embed.shape == (1, 1 + (size // 14) ** 2, 768)
  images = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
  want = _ref_tokens(torch, dino_ref, images, layout)
  got = np.asarray(ours.features(jnp.asarray(images)))
  pooled = np.asarray(ours(jnp.asarray(images)))
  print(f"DINOv2 {layout}{ext} {size}px: max abs diff tokens "
        f"{np.abs(got - want).max():.2e}, pooled {np.abs(pooled - want[:, 0]).max():.2e}")
  assert got.shape == want.shape == (2, 1 + (size // 14) ** 2, 768)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
  np.testing.assert_allclose(pooled, want[:, 0], atol=ATOL, rtol=0)


def test_dinov2_pos_resize_rules_and_full_grid(torch, tmp_path):
  """Small width: 'dinov2' (scale_factor + 0.1) rule at 56 px, and no resize at 518 px."""
  ref = _torch_dinov2(torch, depth=1, dim=128, seed=1)
  path = _save(torch, ref.state_dict(), tmp_path / "small.pth")
  for size, rule in ((56, "dinov2"), (518, "timm")):
    ours = load_dinov2(path, image_size=size, pos_resize=rule)
    images = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    want = _ref_tokens(torch, ref, images, rule)
    np.testing.assert_allclose(np.asarray(ours.features(images)), want, atol=ATOL, rtol=0)
  # The rules really differ: a wrong rule would be caught above.
  pos = ref.pos_embed.detach().numpy()
  a, b = dinov2.resize_pos_embed(pos, 4, "hf"), dinov2.resize_pos_embed(pos, 4, "timm")
  assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("in_size, out_size, mode", [
    (37, 16, "size"), (37, 4, "size"), (37, 50, "size"), (5, 9, "size"),
    (37, 16, "aa"), (37, 3, "aa"), (37, 50, "aa"), (37, 16, "scale"), (37, 4, "scale")])
def test_bicubic_equals_torch_interpolate(torch, in_size, out_size, mode):
  F = torch.nn.functional
  x = np.random.default_rng(in_size + out_size).standard_normal(
      (in_size, in_size + 2, 6)).astype(np.float32)
  t = torch.from_numpy(x).permute(2, 0, 1)[None]
  if mode == "scale":
    sf = ((out_size + 0.1) / in_size, (out_size + 0.1) / (in_size + 2))
    want = F.interpolate(t, scale_factor=sf, mode="bicubic", align_corners=False)
    got = weights.torch_bicubic_resize(x, tuple(want.shape[-2:]), scale_factor=sf)
  else:
    want = F.interpolate(t, size=(out_size, out_size + 1), mode="bicubic",
                         align_corners=False, antialias=(mode == "aa"))
    got = weights.torch_bicubic_resize(x, (out_size, out_size + 1), antialias=(mode == "aa"))
  want = want[0].permute(1, 2, 0).numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_dinov2_convert_cli_keeps_layout(torch, dino_ref, tmp_path):
  hf = _save(torch, _hf_state(dino_ref.state_dict(), 2), tmp_path / "hf.safetensors")
  out = tmp_path / "hf.npz"
  assert convert.main(["dinov2", "--in", hf, "--out", str(out)]) == 0
  keys = set(np.load(out).files)
  assert "embeddings.cls_token" in keys and "embeddings.mask_token" not in keys
  images = np.random.default_rng(3).standard_normal((1, 56, 56, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(load_dinov2(out, 56)(images)),
                             _ref_tokens(torch, dino_ref, images, "hf")[:, 0], atol=ATOL, rtol=0)


def _timm_npz(path, depth=1, dim=64, grid=4, **drop_or_replace):
  rng = np.random.default_rng(0)
  shapes = dinov2.expected_shapes("timm", dim, 14, depth, 4 * dim, 1 + grid * grid)
  state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  for k, v in drop_or_replace.items():
    k = k.replace("__", ".")
    if v is None:
      del state[k]
    else:
      state[k] = v
  np.savez(path, **state)
  return str(path)


def test_dinov2_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="teacher.safetensors"):
    load_dinov2(tmp_path / "teacher.safetensors")
  ok = load_dinov2(_timm_npz(tmp_path / "ok.npz"), image_size=56)
  assert ok(jnp.zeros((2, 56, 56, 3))).shape == (2, 64)
  with pytest.raises(ValueError, match=r"built for 56x56.*got 112x112"):
    ok(jnp.zeros((1, 112, 112, 3)))
  with pytest.raises(ValueError, match=r"m\.npz.*missing key.*'blocks\.0\.ls2\.gamma'"):
    load_dinov2(_timm_npz(tmp_path / "m.npz", blocks__0__ls2__gamma=None), 56)
  with pytest.raises(ValueError, match=r"unexpected key.*'head\.weight'"):
    load_dinov2(_timm_npz(tmp_path / "u.npz", head__weight=np.zeros((10, 64), np.float32)), 56)
  with pytest.raises(ValueError, match=r"'blocks\.0\.attn\.qkv\.bias' has shape \(64,\), "
                                       r"expected \(192,\)"):
    load_dinov2(_timm_npz(tmp_path / "s.npz", blocks__0__attn__qkv__bias=np.zeros(
        64, np.float32)), 56)
  with pytest.raises(ValueError, match="register tokens"):
    load_dinov2(_timm_npz(tmp_path / "r.npz", reg_token=np.zeros((1, 4, 64), np.float32)), 56)
  np.savez(tmp_path / "other.npz", **{"conv.weight": np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r"other\.npz: not a DINOv2"):
    load_dinov2(tmp_path / "other.npz")
  with pytest.raises(ValueError, match="pos_resize"):
    load_dinov2(tmp_path / "ok.npz", pos_resize="nearest")


def test_dinov2_vitb14_size_and_sharding_metadata():
  model = nnx.eval_shape(lambda: DinoV2(rngs=nnx.Rngs(0), image_size=518))
  assert count_params(model) == 86_579_712   # ViT-B/14 at 518 (HF dinov2-base less mask_token)
  assert len(model.blocks) == 12 and model.blocks[0].attn.qkv.kernel.shape == (768, 3, 12, 64)
  meta = model.blocks[0].fc1.kernel.get_metadata()["logical_axes"]
  assert meta == ("embed", "mlp")
