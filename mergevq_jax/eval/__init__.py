"""Evaluation: image metrics (PSNR), codebook statistics (usage, perplexity), and the
fixed-batch reconstruction evaluation the tokenizer trainer runs."""
