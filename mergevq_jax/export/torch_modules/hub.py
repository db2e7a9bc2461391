"""`from_pretrained` / `save_pretrained` for the PyTorch modules (the Hugging Face naming).

An export directory (`mergevq_jax.export.export_dir`: config.json + safetensors) -> a module
in eval mode with every tensor checked (missing, unexpected and mis-shaped names listed
together). PyTorch, numpy and safetensors only; `huggingface_hub` is not needed.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from mergevq_jax.export import export_dir


def own_config(config: dict, check) -> dict:
  """A deep copy of the run's config after `check(config)` (its hyperparameter checks);
  ValueError unless it is a plain nested dict (json.load of config.json), which is what
  `save_pretrained` writes back."""
  if not isinstance(config, dict):
    raise ValueError(f"config must be a nested dict (json.load of the run's config.json), "
                     f"got {type(config).__name__}")
  check(config)
  return copy.deepcopy(config)


class FromPretrained:
  """Mixin of `MergeVQTokenizer` and `MergeAR`: `stage` names the export they load."""

  stage: str = ""

  @classmethod
  def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu"):
    """The model of export directory `path` (either layout; the authors' is mapped back to
    the native one), on `map_location`, in eval mode. `model.export_info` keeps config.json
    (stage, step, weights, source run)."""
    info = export_dir.read_info(path, cls.stage)
    tensors = export_dir.read_tensors(path)
    if info["layout"] == "authors":
      from mergevq_jax.export import authors   # numpy only
      tensors = authors.from_authors(tensors, info["config"])
    model = cls(info["config"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    export_dir.check_tensors(tensors, expected, path)
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                           for k, v in tensors.items()}, strict=True)
    model.export_info = info
    return model.to(map_location).eval()

  def save_pretrained(self, path: str, max_shard_bytes: int = export_dir.MAX_SHARD_BYTES):
    """Write this module as an export directory (native layout) that `from_pretrained` and
    `python -m mergevq_jax.export.importer` read."""
    info = dict(getattr(self, "export_info", {}))
    info.update(stage=self.stage, layout="native", config=self.config,
                torch_class=type(self).__name__)
    info.pop("format", None)
    tensors = {k: v.detach().to("cpu", torch.float32).numpy()
               for k, v in self.state_dict().items()}
    return export_dir.write(path, tensors, info, max_shard_bytes)
