"""Variant configs reproduce the paper's Table A1 parameter counts; `info` prints JSON."""
import json
import re
import subprocess
import sys

import pytest

from mergevq_jax.info import tokenizer_info

from conftest import ROOT, load_config

# (config, encoder params, decoder params), paper Table A1.
TABLE_A1 = [("tokenizer_g", 62.3e6, 82.8e6), ("tokenizer_gr", 62.7e6, 83.4e6),
            ("tokenizer_r", 86.6e6, 83.4e6)]


@pytest.mark.parametrize("name, enc, dec", TABLE_A1)
def test_parameter_counts_match_paper(name, enc, dec):
  info = tokenizer_info(load_config(name), with_flops=False)
  assert abs(info["encoder_params"] / enc - 1) < 0.02
  assert abs(info["decoder_params"] / dec - 1) < 0.02
  assert info["total_params"] == sum(info[k] for k in (
      "encoder_params", "decoder_params", "quantizer_params", "recovery_params",
      "align_head_params"))


def test_variant_geometry_and_alignment_heads():
  g, gr, r = (tokenizer_info(load_config(n), with_flops=False) for n, _, _ in TABLE_A1)
  assert (g["num_tokens"], g["num_keep"]) == (1024, 256)
  assert (gr["num_tokens"], gr["num_keep"]) == (256, 144)
  assert (r["num_tokens"], r["num_keep"]) == (256, 36)
  assert gr["merge_schedule"] == [12, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 5]
  # G+R head 512->2048->2048->768, G head 512->2048->LN->768 (weights + biases).
  assert gr["align_head_params"] == 512 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768
  assert g["align_head_params"] == 512 * 2048 + 2048 + 2 * 2048 + 2048 * 768 + 768
  assert 6.5e6 < gr["recovery_params"] < 8e6  # "~7M" in the paper


@pytest.mark.parametrize("name", ["tokenizer_d32", "tokenizer_d96", "tokenizer_tiny"])
def test_other_sizes_build(name):
  info = tokenizer_info(load_config(name), with_flops=False)
  assert info["encoder_params"] > 0 and info["decoder_params"] > 0


def run_info(*args):
  return subprocess.run([sys.executable, "-m", "mergevq_jax.info", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_info_cli_prints_json_with_flops():
  out = run_info("--config=configs/tokenizer_tiny.py")
  assert out.returncode == 0, out.stderr
  info = json.loads(out.stdout)
  for key in ("encoder_params", "decoder_params", "quantizer_params", "recovery_params",
              "align_head_params", "total_params", "num_tokens", "num_keep",
              "encoder_gflops", "decoder_gflops"):
    assert key in info
  assert info["encoder_gflops"] > 0.05 and info["decoder_gflops"] > info["encoder_gflops"]


def test_info_cli_rejects_unknown_key_and_bad_k():
  out = run_info("--config=configs/tokenizer_tiny.py", "--config.model.foo=3")
  assert out.returncode == 2 and "model has no key 'foo'" in out.stderr
  assert "config/tokenizer.py:tokenizer_defaults" in out.stderr
  out = run_info("--config=configs/tokenizer_tiny.py", "--config.model.num_keep=300", "--noflops")
  assert out.returncode == 2 and "num_keep" in out.stderr and "Traceback" not in out.stderr


def readme_gmacs() -> dict[str, tuple[float, ...]]:
  """config name -> (enc, dec, paper enc, paper dec) GMACs from the README's variants table."""
  rows = {}
  for line in (ROOT / "README.md").read_text().splitlines():
    m = re.match(r"\| `(tokenizer_\w+)\.py` \|.*\| ([\d.]+) / ([\d.]+) \(([\d.]+) / ([\d.]+)\) \|$",
                 line)
    if m:
      rows[m.group(1)] = tuple(float(x) for x in m.groups()[1:])
  return rows


@pytest.mark.parametrize("name", [n for n, _, _ in TABLE_A1])
def test_readme_gmacs_are_what_info_prints_and_near_the_paper(name):
  enc, dec, paper_enc, paper_dec = readme_gmacs()[name]
  info = tokenizer_info(load_config(name))
  assert (info["encoder_gmacs"], info["decoder_gmacs"]) == (enc, dec)
  assert abs(dec / paper_dec - 1) < 0.07
  if name != "tokenizer_r":  # the paper's R encoder count is below ViT-B's own MACs
    assert abs(enc / paper_enc - 1) < 0.05


def test_info_cli_mergear():
  out = run_info("--config=configs/mergear_l.py")
  assert out.returncode == 0, out.stderr
  info = json.loads(out.stdout)
  assert info["num_layers"] == 24 and info["width"] == 1024 and info["num_positions"] == 256
  assert info["cache_slots_full"] == 258 and info["cache_slots_pruned"]["144"] == 162
  assert "K=[256]" in info["cache_note"]   # K = L = 256: 256 + 16 window slots


def test_info_says_when_the_pruned_cache_saves_nothing():
  info = json.loads(run_info("--config=configs/mergear_tiny.py").stdout)
  assert info["cache_slots_pruned"]["64"] > info["cache_slots_full"]     # K = L
  assert "K=[64]" in info["cache_note"] and "saves no memory" in info["cache_note"]


def test_tiny_config_trains_in_minutes_as_its_docstring_says():
  cfg = load_config("tokenizer_tiny")
  assert "a few minutes" in (ROOT / "configs" / "tokenizer_tiny.py").read_text()
  assert cfg.train.batch_size * cfg.train.steps <= 2000   # not 256 x 1,000,000
  assert cfg.train.eval_every <= cfg.train.steps and cfg.train.ckpt_every <= cfg.train.steps
