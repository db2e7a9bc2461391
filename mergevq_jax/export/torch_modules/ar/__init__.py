"""MergeAR (stage 2) in pure PyTorch, equal in function to `mergevq_jax.models.ar` and
loading its native parameter tree unchanged: `MergeAR(config_dict)`, `forward` (teacher-
forced logits), `teacher_forced_logits` (the cached decoder) and `generate` (pruned or full
KV cache, temperature / top-k / top-p / CFG). Imports only torch.
"""
from .decode import DecodeStats
from .kv_cache import CacheLayout
from .mergear import PREFIX, MergeAR, check_hparams
from .sampling import SamplingParams

__all__ = ["MergeAR", "DecodeStats", "CacheLayout", "SamplingParams", "PREFIX",
           "check_hparams"]
