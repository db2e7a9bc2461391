"""Data: offline sample photos, image folders and tfds ArrayRecord sources; train / eval
views; grain pipelines. Importing this package needs neither TensorFlow nor
tensorflow-datasets (TfdsSource imports it when constructed)."""
from mergevq_jax.data.augment import (EvalAugment, TrainAugment, eval_view, main_view,
                                      strong_view, weak_view)
from mergevq_jax.data.pipeline import (make_eval_batch, make_train_dataset,
                                       make_train_iterator, per_process_batch_size)
from mergevq_jax.data.sources import (ImageFolder, SampleImages, TfdsSource,
                                      source_from_config)

__all__ = [
    "EvalAugment", "TrainAugment", "eval_view", "main_view", "strong_view", "weak_view",
    "make_eval_batch", "make_train_dataset", "make_train_iterator", "per_process_batch_size",
    "ImageFolder", "SampleImages", "TfdsSource", "source_from_config",
]
