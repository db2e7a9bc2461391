"""Stage-1 models, one file per paper concept (tome, lfq, encoder, decoder, recovery,
tokenizer, discriminator, layers); the stage-2 generators are in `models/ar`. Nothing here
imports config, train or the host; kernels come from `mergevq_jax.ops`."""
