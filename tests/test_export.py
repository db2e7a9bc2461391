"""Export a run to safetensors and import it back: identical arrays both ways, sharded files,
the EMA/raw choice, and one clear error per bad input before any heavy work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, load_config
from mergevq_jax import checkpoint, pretrained
from mergevq_jax.export import export_dir, native
from mergevq_jax.export.exporter import export_run
from mergevq_jax.export.importer import import_export, read_native
from mergevq_jax.run_dir import save_config


def _random_state(config, seed: int = 0):
  """The stage's train state with every float leaf random (params and EMA differ, no weight
  is a trivial 0 or 1) and every integer leaf 0: built from the abstract state, nothing
  compiled (initialising the real state compiles every initializer, ~20 s)."""
  from mergevq_jax.train import ar_state, tokenizer_state
  states = tokenizer_state if config.stage == "tokenizer" else ar_state
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(rng.normal(0, 0.05, a.shape) if jnp.issubdtype(a.dtype, jnp.floating)
                            else np.zeros(a.shape), a.dtype),
      states.abstract_state(config))


def _save_run(workdir: str, config, layout: str | None = None):
  """A run directory with config.json and one checkpoint (step 7) of random weights."""
  state = _random_state(config)
  save_config(workdir, config)
  ckpt = checkpoint.Checkpointer(workdir, keep=1,
                                 layout=layout or checkpoint.LAYOUTS[config.stage])
  ckpt.save(7, state)
  ckpt.close()
  return state


def _tok_config():
  config = load_config("tokenizer_tiny")
  config.disc.enabled = False
  return config


@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tok_run"))
  return workdir, _save_run(workdir, _tok_config())


def test_tokenizer_export_and_import_are_the_identity(tok_run, tmp_path):
  workdir, state = tok_run
  out = str(tmp_path / "export")
  result = export_run(workdir, out)
  assert result["weights"] == "ema" and result["step"] == 7 and result["layout"] == "native"
  assert set(result["files"]) == {"model.safetensors", "config.json"}
  from safetensors import safe_open
  with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
    assert f.metadata()["format"] == "pt" and f.metadata()["stage"] == "tokenizer"
  info = export_dir.read_info(out, "tokenizer")
  assert info["config"]["model"]["num_keep"] == _tok_config().model.num_keep
  tensors = export_dir.read_tensors(out)
  ema = native.flat_params(state.ema)
  assert tensors.keys() == ema.keys()
  assert all(np.array_equal(tensors[k], ema[k]) for k in ema)

  new = str(tmp_path / "imported")
  assert import_export(out, new)["step"] == 7
  model, config, step = pretrained.load_tokenizer(new)
  assert step == 0 and config.model.to_dict() == _tok_config().model.to_dict()
  back = native.flat_params(model)
  assert all(np.array_equal(back[k], ema[k]) for k in ema)


def test_raw_weights_and_sharded_files(tok_run, tmp_path):
  workdir, state = tok_run
  out = str(tmp_path / "raw")
  raw = native.flat_params(state.params)
  shard = sum(v.nbytes for v in raw.values()) // 3   # three or four shards
  result = export_run(workdir, out, weights="raw", max_shard_bytes=shard)
  shards = [f for f in result["files"] if f.startswith("model-")]
  assert len(shards) >= 3 and "model.safetensors.index.json" in result["files"]
  assert all(f.endswith(f"-of-{len(shards):05d}.safetensors") for f in shards)
  tensors = export_dir.read_tensors(out)
  assert all(np.array_equal(tensors[k], raw[k]) for k in raw) and tensors.keys() == raw.keys()
  # a smaller export into the same directory leaves no stale shards behind
  export_run(workdir, out, weights="raw")
  assert sorted(f for f in os.listdir(out) if "safetensors" in f) == ["model.safetensors"]


def test_authors_layout_export_and_import(tmp_path):
  """--layout=authors: the authors' key names and authors_config.yaml; the learned source
  recovery (no counterpart in their code) travels under mergevq_jax.*; the importer reads
  the native arrays back bit for bit (writing the run directory is the native test's)."""
  from mergevq_jax.export import authors
  from test_export_authors import small_gr_config
  config = small_gr_config()
  config.disc.enabled = False
  config.model.keep_candidates, config.model.keep_probs = (36,), (1.0,)
  workdir = str(tmp_path / "run")
  state = _save_run(workdir, config)
  out = str(tmp_path / "authors")
  result = export_run(workdir, out, layout="authors")
  assert authors.YAML_FILE in result["files"]
  tensors = export_dir.read_tensors(out)
  assert any(k.startswith("encoder.") for k in tensors)
  assert any(k.startswith("decoder.") for k in tensors)
  assert any(k.startswith("mergevq_jax.recovery.") for k in tensors)
  info, _, back = read_native(out)
  assert info["layout"] == "authors"
  ema = native.flat_params(state.ema)
  assert back.keys() == ema.keys() and all(np.array_equal(back[k], ema[k]) for k in ema)


def test_mergear_export_and_import(tmp_path):
  config = load_config("mergear_tiny")
  workdir = str(tmp_path / "ar")
  state = _save_run(workdir, config)
  out = str(tmp_path / "ar_export")
  export_run(workdir, out)
  new = str(tmp_path / "ar_imported")
  import_export(out, new)
  model, _, _ = pretrained.load_mergear(new)
  expected = native.flat_params(state.ema if jax.tree.leaves(state.ema) else state.params)
  back = native.flat_params(model)
  assert back.keys() == expected.keys()
  assert all(np.array_equal(back[k], expected[k]) for k in expected)
  with pytest.raises(ValueError, match="authors' code has no MergeAR"):
    export_run(workdir, str(tmp_path / "x"), layout="authors")


def test_bad_runs_are_refused_before_any_work(tok_run, tmp_path):
  with pytest.raises(ValueError, match="not a mergevq_jax run directory"):
    export_run(str(tmp_path), str(tmp_path / "o"))
  empty = str(tmp_path / "empty")
  save_config(empty, _tok_config())
  with pytest.raises(ValueError, match="has no checkpoint yet"):
    export_run(empty, str(tmp_path / "o"))
  other = str(tmp_path / "other_layout")
  _save_run(other, _tok_config(), layout="someone.else.v9")
  with pytest.raises(ValueError, match="layout 'someone.else.v9'"):
    export_run(other, str(tmp_path / "o"))
  assert not os.path.exists(tmp_path / "o")   # nothing written for a refused export
  ar = load_config("mergear_tiny")
  ar.train.ema_decay = 0.0
  no_ema = str(tmp_path / "no_ema")
  save_config(no_ema, ar)
  with pytest.raises(ValueError, match="kept no EMA"):
    export_run(no_ema, str(tmp_path / "o"), weights="ema")


def test_import_lists_every_bad_tensor(tok_run, tmp_path):
  workdir, _ = tok_run
  out = str(tmp_path / "export")
  export_run(workdir, out)
  tensors = export_dir.read_tensors(out)
  names = sorted(tensors)
  del tensors[names[0]], tensors[names[1]]
  tensors["decoder.not_a_layer.kernel"] = np.zeros(3, np.float32)
  tensors[names[2]] = np.zeros((5, 5), np.float32)
  info = export_dir.read_info(out)
  export_dir.write(out, tensors, {k: v for k, v in info.items() if k != "format"})
  with pytest.raises(ValueError) as e:
    import_export(out, str(tmp_path / "new"))
  text = str(e.value)
  assert "4 tensor(s) do not match" in text
  assert f"missing: {names[0]}" in text and f"missing: {names[1]}" in text
  assert "unexpected: decoder.not_a_layer.kernel" in text and f"wrong shape: {names[2]}" in text
  assert not os.path.exists(tmp_path / "new" / "config.json")


def test_export_dir_errors(tmp_path):
  with pytest.raises(ValueError, match="not a mergevq_jax export directory"):
    export_dir.read_info(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"format": export_dir.FORMAT,
                                                    "stage": "mergear", "layout": "native"}))
  with pytest.raises(ValueError, match="holds a mergear .MergeAR., not a tokenizer"):
    export_dir.read_info(str(tmp_path), "tokenizer")
  (tmp_path / "config.json").write_text(json.dumps({"format": "something.v0"}))
  with pytest.raises(ValueError, match="format 'something.v0'"):
    export_dir.read_info(str(tmp_path))


def test_cli_one_line_errors(tmp_path):
  cmd = [sys.executable, "-m", "mergevq_jax.export", f"--workdir={tmp_path}",
         f"--out={tmp_path}/o"]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().startswith("error: ")
  assert "not a mergevq_jax run directory" in r.stderr and "Traceback" not in r.stderr


NO_JAX_LOAD = r"""
import importlib.abc, json, sys
BLOCKED = ("jax", "jaxlib", "flax", "ml_collections", "orbax", "optax")
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import torch
from mergevq_jax.export.torch_modules import MergeAR, MergeVQTokenizer
tok_dir, ar_dir = sys.argv[1:3]
tok = MergeVQTokenizer.from_pretrained(tok_dir)
torch.manual_seed(0)
x = torch.rand(2, 3, 64, 64) * 2 - 1
with torch.no_grad():
  rec, enc = tok.reconstruct(x, 36)
ar = MergeAR.from_pretrained(ar_dir)
codes, stats = ar.generate([0, 1], 36, temperature=0.0)
print(json.dumps({"rec": rec.numpy().tolist(), "indices": enc.indices.tolist(),
                  "codes": list(codes.shape), "step": tok.export_info["step"]}))
"""


def test_from_pretrained_without_jax_equals_jax(tok_run, tmp_path):
  """The PyTorch user's path: export directories -> from_pretrained in a process where JAX,
  flax, ml_collections and orbax cannot be imported -> the JAX model's reconstruction."""
  from mergevq_jax.models.tokenizer import jit_method
  workdir, _ = tok_run
  tok_dir, ar_dir = str(tmp_path / "tok"), str(tmp_path / "ar")
  export_run(workdir, tok_dir, max_shard_bytes=2_000_000)    # sharded: the index is read
  ar_run = str(tmp_path / "ar_run")
  _save_run(ar_run, load_config("mergear_tiny"))
  export_run(ar_run, ar_dir)
  proc = subprocess.run([sys.executable, "-c", NO_JAX_LOAD, tok_dir, ar_dir], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  model, _, _ = pretrained.load_tokenizer(workdir)
  graphdef, params = nnx.split(model)
  import torch
  torch.manual_seed(0)   # the images the subprocess drew
  images = (torch.rand(2, 3, 64, 64) * 2 - 1).permute(0, 2, 3, 1).numpy()
  rec, enc = jit_method(graphdef, "reconstruct")(params, jnp.asarray(images), num_keep=36)
  assert np.abs(np.asarray(rec) - np.transpose(np.array(out["rec"]), (0, 2, 3, 1))).max() < 1e-4
  assert np.mean(np.asarray(enc.indices) == np.array(out["indices"])) >= 0.999
  assert out["codes"] == [2, 64] and out["step"] == 7


def test_from_pretrained_checks_the_stage_and_every_tensor(tok_run, tmp_path):
  from mergevq_jax.export.torch_modules import MergeAR, MergeVQTokenizer
  workdir, _ = tok_run
  out = str(tmp_path / "tok")
  export_run(workdir, out)
  with pytest.raises(ValueError, match="holds a tokenizer .MergeVQTokenizer., not a mergear"):
    MergeAR.from_pretrained(out)
  tensors = export_dir.read_tensors(out)
  name = sorted(tensors)[0]
  tensors[name] = tensors[name][..., :1]
  tensors.pop(sorted(tensors)[1])
  info = export_dir.read_info(out)
  export_dir.write(out, tensors, {k: v for k, v in info.items() if k != "format"})
  with pytest.raises(ValueError, match="2 tensor.s. do not match") as e:
    MergeVQTokenizer.from_pretrained(out)
  assert f"wrong shape: {name}" in str(e.value) and "missing: " in str(e.value)
