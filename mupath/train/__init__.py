"""Training and evaluation of one path: input pipeline, augmentation, optimiser, schedule, loop."""
from mupath.train.evaluate import accuracy_of, logits_of
from mupath.train.loop import TrainConfig, TrainOutcome, train_path
from mupath.train.optim import lr_at, make_optimizer
from mupath.train.pipeline import augment, batch_iterator, to_model_input

__all__ = ["to_model_input", "augment", "batch_iterator", "make_optimizer", "lr_at", "TrainConfig",
           "TrainOutcome", "train_path", "logits_of", "accuracy_of"]
