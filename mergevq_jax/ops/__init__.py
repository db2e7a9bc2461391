"""Ops with hand-written gradients: the same maths as `lax`, faster (and leaner) on XLA:CPU.

  conv            2-D conv whose kernel gradient is a banded matmul
  group_norm      GroupNorm with a hand-written VJP (torch numerics, all platforms)
  norm_silu_conv  conv(SiLU(GroupNorm(x))) keeping only x for the backward pass
  depthwise       depthwise 3x3 conv as shifted multiply-adds

The implementation is chosen from the config's platform ('cpu', 'gpu', 'tpu'), passed
down by the models, never from the backend of the running process (a CPU host compiling
ahead of time for a TPU topology runs on 'cpu'). Nothing here imports config, models or
train.
"""
