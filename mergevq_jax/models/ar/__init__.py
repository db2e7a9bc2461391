"""Stage-2 generators: MergeAR (blocks, model, merge mask, KV cache, sampling, scan decoder)."""
