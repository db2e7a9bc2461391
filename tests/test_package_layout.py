"""The package's dependency rules: weights load without the training code, models and
ops know nothing of config or train, kernels are chosen from the config's platform, and
every config has a stage that main dispatches on."""
import ast
import pathlib
import subprocess
import sys

import pytest

from mergevq_jax import config as config_lib

from conftest import ROOT, load_config

PACKAGE = ROOT / "mergevq_jax"


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every module an `import` / `from ... import` anywhere in the file names (lazy ones too)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


@pytest.mark.parametrize("room", ["models", "ops"])
def test_models_and_ops_import_neither_config_nor_train(room):
  for path in sorted((PACKAGE / room).rglob("*.py")):
    bad = {m for m in imported_modules(path)
           if m.split(".")[:2] in (["mergevq_jax", "config"], ["mergevq_jax", "train"])}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("room", ["models", "ops"])
def test_no_platform_choice_from_the_default_backend(room):
  for path in sorted((PACKAGE / room).rglob("*.py")):
    assert "default_backend" not in path.read_text(), path.relative_to(ROOT)


def loaded_after(code: str) -> list[str]:
  """mergevq_jax modules in sys.modules after running `code` in a fresh process."""
  out = subprocess.run(
      [sys.executable, "-c", code + "\nimport sys; print(sorted(m for m in sys.modules "
       "if m.startswith('mergevq_jax')))"], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_pretrained_and_models_load_without_train_or_config():
  mods = loaded_after("import mergevq_jax.pretrained, mergevq_jax.models.tokenizer, "
                      "mergevq_jax.models.ar.decode, mergevq_jax.ops.depthwise")
  assert not [m for m in mods if m.startswith(("mergevq_jax.train", "mergevq_jax.config"))], mods


def test_every_config_has_a_known_stage():
  for path in sorted((ROOT / "configs").glob("*.py")):
    cfg = load_config(path.stem)
    assert config_lib.stage_of(cfg) in ("tokenizer", "mergear"), path.name
    config_lib.validate(cfg)
  cfg = load_config("mergear_tiny")
  cfg.stage = "randar"
  with pytest.raises(ValueError, match=r"'randar' is not a known stage.*mergear.*tokenizer"):
    config_lib.stage_of(cfg)
  tok = load_config("tokenizer_tiny")
  tok.stage = "mergear"   # a tokenizer schema claiming another stage
  with pytest.raises(ValueError):
    config_lib.validate(tok)


def test_main_rejects_an_unknown_stage(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "mergevq_jax.main", "--config=configs/mergear_tiny.py",
       "--config.stage=randar", f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "known stages: ['mergear', 'tokenizer']" in out.stderr
  assert "Traceback" not in out.stderr
