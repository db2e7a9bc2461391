"""Pictures of the merge groups: which image regions were merged into which kept token.

Pure numpy (+ PIL for text). The source matrix is the owner index `owner[l]` (the kept
token that absorbed patch l, raster order over a gh x gw grid), and `anchor[k]` is the
patch where kept token k sits (its own, never-merged line; `EncodeOutput.anchor`).

  colors = group_colors(owner, grid, patch)      # (H, W, 3) uint8: each patch in its
                                                  # group's colour, one colour per group
  picture = group_overlay(image, owner, anchor, grid)   # blended, borders, anchors marked
"""
from __future__ import annotations

import colorsys

import numpy as np


def palette(n: int, seed: int = 0) -> np.ndarray:
  """(n, 3) uint8 distinct, saturated colours (golden-ratio hues, varied lightness) in a
  shuffled order, so that neighbouring token indices rarely get similar colours."""
  if n < 1:
    raise ValueError(f"palette needs n >= 1, got {n}")
  golden = 0.618033988749895
  rows = []
  for i in range(n):
    h = (0.11 + i * golden) % 1.0
    light = (0.45, 0.6, 0.35)[i % 3]
    sat = (0.85, 0.65)[(i // 3) % 2]
    rows.append([round(255 * c) for c in colorsys.hls_to_rgb(h, light, sat)])
  colors = np.asarray(rows, np.uint8)
  return colors[np.random.default_rng(seed).permutation(n)]


def _check(owner: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  owner = np.asarray(owner)
  gh, gw = grid
  if owner.shape != (gh * gw,):
    raise ValueError(f"owner must have one entry per patch of the {gh}x{gw} grid "
                     f"({gh * gw}), got shape {owner.shape}")
  return owner.reshape(gh, gw)


def group_colors(owner: np.ndarray, grid: tuple[int, int], patch: int,
                 colors: np.ndarray | None = None) -> np.ndarray:
  """(gh * patch, gw * patch, 3) uint8: every pixel of patch l in the colour of group
  owner[l]; `colors` (K, 3) defaults to `palette(owner.max() + 1)`."""
  own = _check(owner, grid)
  colors = palette(int(own.max()) + 1) if colors is None else np.asarray(colors, np.uint8)
  return np.repeat(np.repeat(colors[own], patch, axis=0), patch, axis=1)


def group_borders(owner: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
  """(H, W) bool: pixels on a patch edge that separates two groups (1 px each side)."""
  own = _check(owner, grid)
  up = np.repeat(np.repeat(own, patch, axis=0), patch, axis=1)
  edge = np.zeros(up.shape, bool)
  edge[:-1] |= up[:-1] != up[1:]
  edge[1:] |= up[:-1] != up[1:]
  edge[:, :-1] |= up[:, :-1] != up[:, 1:]
  edge[:, 1:] |= up[:, :-1] != up[:, 1:]
  return edge


def group_overlay(image: np.ndarray, owner: np.ndarray, anchor: np.ndarray | None,
                  grid: tuple[int, int], alpha: float = 0.55) -> np.ndarray:
  """The image (H, W, 3) uint8 (H = gh * patch) with each group tinted in its colour,
  group borders dark, and each kept token's own patch marked by a ring."""
  image = np.asarray(image, np.uint8)
  gh, gw = grid
  patch = image.shape[0] // gh
  if image.shape[:2] != (gh * patch, gw * patch):
    raise ValueError(f"image {image.shape[:2]} is not a {gh}x{gw} grid of square patches")
  colors = group_colors(owner, grid, patch).astype(np.float32)
  out = (1 - alpha) * image.astype(np.float32) + alpha * colors
  out[group_borders(owner, grid, patch)] = (20, 20, 20)
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  if anchor is not None and patch >= 4:
    yy, xx = np.mgrid[0:patch, 0:patch]
    c = (patch - 1) / 2
    r = np.hypot(yy - c, xx - c)
    radius = max(3.0, patch * 0.16)
    ring, dot = (r <= radius) & (r >= radius - 1.5), r < radius - 1.5
    for a in np.asarray(anchor).reshape(-1):
      y, x = divmod(int(a), gw)
      tile = out[y * patch:(y + 1) * patch, x * patch:(x + 1) * patch]
      tile[ring] = (0, 0, 0)
      tile[dot] = (255, 255, 255)
  return out


def upscale(image: np.ndarray, min_size: int = 256) -> np.ndarray:
  """Nearest-neighbour integer upscale so the shorter side is at least `min_size`."""
  f = max(1, -(-min_size // min(image.shape[:2])))
  return np.repeat(np.repeat(image, f, axis=0), f, axis=1) if f > 1 else image


def labelled_panel(rows: list[list[np.ndarray]], labels: list[list[str]], pad: int = 6,
                   text_h: int = 14) -> np.ndarray:
  """A grid of equally sized (H, W, 3) uint8 tiles with a caption above each tile
  (an empty tile: None)."""
  from PIL import Image, ImageDraw
  h, w = next(t for row in rows for t in row if t is not None).shape[:2]
  n = max(len(r) for r in rows)
  canvas = Image.new("RGB", (pad + n * (w + pad), pad + len(rows) * (h + text_h + pad)),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, (row, caps) in enumerate(zip(rows, labels)):
    for j, (tile, cap) in enumerate(zip(row, caps)):
      x, y = pad + j * (w + pad), pad + i * (h + text_h + pad)
      if cap:
        draw.text((x, y), cap, fill=(0, 0, 0))
      if tile is not None:
        canvas.paste(Image.fromarray(tile), (x, y + text_h))
  return np.asarray(canvas)
