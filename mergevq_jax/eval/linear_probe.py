"""Linear probe of a tokenizer's encoder: how linearly separable its features are
(the library; the command is `python -m mergevq_jax.eval.probe`).

Features (`Tokenizer.probe_features`, every token kept, no merging): the [CLS] token and the
mean of the patch tokens, each the transformer's output. Images are the eval views
(shorter side -> image size, centre crop). Classifier, as MAE's linear probe: BatchNorm
without affine parameters (batch statistics in training, running statistics at test) then
one linear layer, trained with AdamW and a cosine schedule on the fixed features. Offline
labelled sets: scikit-learn's 8x8 digits (10 classes) and scikit-image's lfw_subset
(faces / non-faces), with a fixed stratified 70/30 split.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

OFFLINE_SETS = ("digits", "lfw_subset")


# ----------------------------------------------------------------------------- data

class ArraySource:
  """Labelled images held in memory: {'image': (H, W, 3) uint8, 'label': int}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, name: str = "arrays"):
    from mergevq_jax.data.sources import array_to_rgb_uint8
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images = [array_to_rgb_uint8(x) for x in images]
    self.labels = np.asarray(labels, np.int64)
    self.name = name

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": int(self.labels[i])}


def offline_set(name: str) -> ArraySource:
  """scikit-learn's digits (1,797 8x8, 10 classes) or scikit-image's lfw_subset (200 25x25,
  100 faces then 100 non-faces), as 8-bit images."""
  if name == "digits":
    from sklearn.datasets import load_digits
    d = load_digits()
    return ArraySource(np.round(d.images * (255 / 16)).astype(np.uint8), d.target, name)
  if name == "lfw_subset":
    from skimage.data import lfw_subset
    x = lfw_subset()
    return ArraySource(np.round(x * 255).astype(np.uint8), np.repeat([1, 0], len(x) // 2), name)
  raise ValueError(f"unknown offline set {name!r}; known: {OFFLINE_SETS}")


def stratified_split(labels: np.ndarray, test_fraction: float = 0.3, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices): `test_fraction` of every class, fixed by `seed`."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    k = int(round(len(idx) * test_fraction))
    test.extend(idx[:k])
    train.extend(idx[k:])
  return np.sort(train), np.sort(test)


# ----------------------------------------------------------------------------- features

def extract_features(tokenizer, source, indices, batch: int = 64, progress: bool = True
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({'cls': (N, W), 'mean': (N, W)} float32, labels (N,)) of source[indices]."""
  from mergevq_jax.eval import batches
  from mergevq_jax.progress import Progress
  graphdef, state = nnx.split(tokenizer)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).probe_features(x))
  feats, labels = {"cls": [], "mean": []}, []
  bar = Progress(len(indices), unit="image", label="features") if progress else None
  for images, n, y in batches.eval_view_batches(source, indices, tokenizer.config.model
                                                .image_size, batch):
    out = fn(state, jnp.asarray(images))
    for k in feats:
      feats[k].append(np.asarray(out[k], np.float32)[:n])
    labels.append(y[:n])
    if bar is not None:
      bar.update(n)
  if bar is not None:
    bar.close()
  return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)


# ----------------------------------------------------------------------------- classifier

class LinearProbe(nnx.Module):
  """BatchNorm (no scale / bias, eps 1e-6) + Linear(width -> classes)."""

  def __init__(self, width: int, num_classes: int, *, rngs: nnx.Rngs):
    self.norm = nnx.BatchNorm(width, use_scale=False, use_bias=False, epsilon=1e-6,
                              momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x):
    return self.head(self.norm(x))


@dataclasses.dataclass
class ProbeConfig:
  epochs: int = 90
  batch_size: int = 64
  lr: float = 1e-3
  weight_decay: float = 0.0
  seed: int = 0


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, num_classes: int | None = None,
                     cfg: ProbeConfig = ProbeConfig()) -> dict:
  """Train the probe on (train_x, train_y); {'train_accuracy', 'test_accuracy', ...}."""
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
  if train_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"features must be (N, D) of one D, got {train_x.shape}, {test_x.shape}")
  if len(train_x) < 2:
    raise ValueError(f"the probe needs at least 2 training examples, got {len(train_x)}")
  num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
  batch = min(cfg.batch_size, len(train_x))
  steps_per_epoch = max(1, len(train_x) // batch)
  total = cfg.epochs * steps_per_epoch
  model = LinearProbe(train_x.shape[1], num_classes, rngs=nnx.Rngs(cfg.seed))
  tx = optax.adamw(optax.cosine_decay_schedule(cfg.lr, total), weight_decay=cfg.weight_decay)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, x):
    return jnp.argmax(model(x), axis=-1)

  rng = np.random.default_rng(cfg.seed)
  loss = None
  for _ in range(cfg.epochs):
    order = rng.permutation(len(train_x))
    for s in range(steps_per_epoch):
      idx = order[s * batch:(s + 1) * batch]
      loss = step(model, opt, jnp.asarray(train_x[idx]), jnp.asarray(train_y[idx]))
  model.eval()
  acc = lambda x, y: float(np.mean(np.asarray(predict(model, jnp.asarray(x))) == y))
  return {"train_accuracy": acc(train_x, train_y), "test_accuracy": acc(test_x, test_y),
          "chance": float(np.max(np.bincount(test_y, minlength=num_classes)) / len(test_y)),
          "num_train": len(train_x), "num_test": len(test_x), "num_classes": num_classes,
          "final_loss": float(loss), "epochs": cfg.epochs}
