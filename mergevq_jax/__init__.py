"""MergeVQ (CVPR 2025) in JAX/Flax NNX: token-merging VQ tokenizer and MergeAR generator.

Rooms: config/ (schemas per stage), ops/ (kernels), models/ (stage 1) and models/ar/
(stage 2), nets/ (frozen networks), data/, eval/, train/, checkpoint.py and pretrained.py
(run directories), and the command lines main, tokenize, sample, info.
"""
