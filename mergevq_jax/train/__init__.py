"""Training: one loop for every stage (loop), the guarded update and EMA (optim), and per
stage its state, step and trainer (tokenizer_*, ar_*), plus losses and the logger."""
