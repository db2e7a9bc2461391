"""PyTorch export: `torch_modules/` (pure PyTorch, never imports JAX), the layouts a
checkpoint is written in (`native`: the project's own parameter tree; `authors`: the
authors' PyTorch key names, tokenizer only), and the command lines that export a run
(`python -m mergevq_jax.export`) and import one back (`python -m mergevq_jax.export.importer`).

Nothing imported by this file needs JAX: `mergevq_jax.export.torch_modules` must import
in an environment with only PyTorch and safetensors installed.
"""
