"""Ahead-of-time compilation for TPU slices from any machine (`python -m mergevq_jax.aot`).

With libtpu installed (`pip install "jax[tpu]==<jax version>"`), JAX compiles for a TPU
topology on a CPU-only host. This room compiles exactly the functions the trainers and
the sampler run, on the config's mesh and rules over that topology's chips, and reads
per-chip memory and cost from the compiled executables:

  chips.py     the TPU generations (HBM, bf16 peak, bandwidth) and topology names
  flops.py     model FLOPs counted from the jaxpr, scan bodies times their length
  targets.py   the functions to compile per stage, with their abstract inputs
  report.py    compile, analyse, one row per function; the largest batch that fits
  run.py       all of it for one config and topology (the command line's body)
"""
