"""The merge-group pictures and the reconstruct command: colour regions equal the source
matrix (one colour per group, every pixel of a patch in its group's colour), borders lie
exactly between groups, each kept token's own patch is marked; the command reads any
image PIL reads (EXIF orientation, grayscale, RGBA) and writes panels and JSON."""
import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import ROOT, random_tokenizer_params
from mergevq_jax.export import native
from mergevq_jax import overlay
from mergevq_jax.models import tome
from mergevq_jax.models.tokenizer import Tokenizer, jit_method
from mergevq_jax.images import load_image
from test_export import _save_run, _tok_config


def test_palette_colours_are_distinct():
  for n in (1, 7, 64, 256):
    colors = overlay.palette(n)
    assert colors.shape == (n, 3) and len({tuple(c) for c in colors}) == n


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
  """The tiny tokenizer with random weights, built without running the initialisers."""
  model = nnx.eval_shape(lambda: Tokenizer(tiny_config, rngs=nnx.Rngs(0)))
  native.load_params(model, random_tokenizer_params(model))
  return model


@pytest.fixture(scope="module")
def encode(tiny_model):
  graphdef, state = nnx.split(tiny_model)
  fn = jit_method(graphdef, "encode")
  return lambda images, k: fn(state, images, num_keep=k)


def test_colour_regions_equal_the_source_matrix(tiny_model, tiny_images, encode):
  """With the tokenizer's own source: the pixels in kept token k's colour are exactly
  the patches where S[k, l] = 1."""
  enc = encode(tiny_images, 25)
  grid, patch = tiny_model.grid, tiny_model.downsample
  S = np.asarray(enc.source_matrix())[0]                      # (K, L)
  colors = overlay.palette(25)
  picture = overlay.group_colors(np.asarray(enc.owner[0]), grid, patch, colors)
  assert picture.shape == (grid[0] * patch, grid[1] * patch, 3)
  for k in range(25):
    region = np.all(picture == colors[k], axis=-1)
    patches = S[k].reshape(grid).astype(bool)
    np.testing.assert_array_equal(region, np.kron(patches, np.ones((patch, patch), bool)))
  assert np.asarray(enc.size[0]).max() > 1    # some token did absorb several patches


def test_borders_separate_groups_and_anchors_are_marked():
  owner = np.array([0, 0, 1,
                    2, 0, 1])
  grid, patch = (2, 3), 8
  edge = overlay.group_borders(owner, grid, patch)
  assert not edge[2:6, 6:10].any()                       # patches (0,0) and (0,1): same group
  assert edge[2:6, 15:17].all()                          # (0,1) | (0,2): groups 0 | 1
  assert edge[7:9, 2:6].all()                            # (0,0) over (1,0): groups 0 | 2
  image = np.full((16, 24, 3), 128, np.uint8)
  out = overlay.group_overlay(image, owner, np.array([1, 2, 3]), grid)
  centre = lambda p: out[(p // 3) * 8 + 3:(p // 3) * 8 + 5, (p % 3) * 8 + 3:(p % 3) * 8 + 5]
  for p in (1, 2, 3):
    assert (centre(p) == 255).all()                      # the marked patches
  assert not (centre(0) == 255).all() and not (centre(4) == 255).all()
  with pytest.raises(ValueError, match="one entry per patch"):
    overlay.group_colors(owner[:5], grid, patch)


def test_anchor_is_the_kept_tokens_own_patch(tiny_images, encode):
  """owner[anchor[k]] == k for every kept token, anchors distinct; identity without merging."""
  for k in (25, 36, 64):
    enc = encode(tiny_images, k)
    owner, anchor = np.asarray(enc.owner), np.asarray(enc.anchor)
    for b in range(owner.shape[0]):
      np.testing.assert_array_equal(owner[b, anchor[b]], np.arange(k))
  np.testing.assert_array_equal(anchor[0], np.arange(64))
  state = tome.init_merge_state(1, 6)
  np.testing.assert_array_equal(np.asarray(state.anchor[0]), np.arange(6))


def _photo(seed: int, size=(48, 32)) -> np.ndarray:
  """A smooth (JPEG-friendly), asymmetric test picture of `size` (width, height)."""
  y, x = np.mgrid[0:size[1], 0:size[0]] / np.array(size[::-1])[:, None, None]
  return np.round(255 * np.stack([x, y, (0.3 + 0.4 * np.sin(3 * x + seed) * y) % 1], -1)
                  ).astype(np.uint8)


def test_load_image_honours_exif_and_converts_modes(tmp_path):
  pixels = _photo(0)
  upright = tmp_path / "upright.png"
  Image.fromarray(np.rot90(pixels, -1).copy()).save(upright)   # what the camera meant
  rotated = tmp_path / "rotated.jpg"
  exif = Image.Exif()
  exif[0x0112] = 6                                            # rotate 90 degrees clockwise
  Image.fromarray(pixels).save(rotated, exif=exif, quality=100)
  a, b = load_image(str(upright), 32), load_image(str(rotated), 32)
  assert a.shape == b.shape == (32, 32, 3)
  assert np.abs(a - b).mean() < 0.05                           # equal up to JPEG loss
  gray, rgba, rgb = tmp_path / "g.png", tmp_path / "a.png", tmp_path / "c.png"
  Image.fromarray(pixels[..., 0]).save(gray)
  Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])).save(rgba)
  Image.fromarray(pixels).save(rgb)
  g = load_image(str(gray), 16)
  assert g.shape == (16, 16, 3) and np.array_equal(g[..., 0], g[..., 2])
  np.testing.assert_array_equal(load_image(str(rgba), 16), load_image(str(rgb), 16))
  with pytest.raises(FileNotFoundError, match="nowhere.png"):
    load_image(str(tmp_path / "nowhere.png"), 16)
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="bad.jpg: not an image"):
    load_image(str(tmp_path / "bad.jpg"), 16)


def test_reconstruct_command_writes_panels_and_json(tmp_path):
  cfg = _tok_config()
  cfg.model.recovery.enabled = True
  workdir = str(tmp_path / "run")
  _save_run(workdir, cfg)
  a, b = tmp_path / "a.jpg", tmp_path / "sub" / "a.png"
  b.parent.mkdir()
  Image.fromarray(_photo(1, (80, 60))).save(a)
  Image.fromarray(_photo(2)[..., 0]).save(b)
  out = subprocess.run([sys.executable, "-m", "mergevq_jax.reconstruct", f"--workdir={workdir}",
                        f"--images={a}", str(b), "--num_keep=25", "--recovered", "--lpips=",
                        f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "reconstruct.json").read_text())
  assert [e["panel"].rsplit("/", 1)[1] for e in report["images"]] == ["a.png", "a_2.png"]
  for e in report["images"]:
    assert Image.open(e["panel"]).size[0] > 2 * 256   # original + K=25, upscaled
    for k in ("25",):
      row = e["per_k"][k]
      assert len(row["codes"]) == int(k) and sum(row["group_sizes"]) == 64
      assert len(row["anchors"]) == int(k) and np.isfinite(row["psnr"])
      assert sum(row["recovered"]["group_sizes"]) == 64
  bad = subprocess.run([sys.executable, "-m", "mergevq_jax.reconstruct", f"--workdir={workdir}",
                        str(a), "--num_keep=3", f"--out={tmp_path / 'out2'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "num_keep=3" in bad.stderr, bad.stderr[-2000:]
