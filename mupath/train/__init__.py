"""Training and evaluation of one path: input pipeline, augmentation, optimiser, schedule, loop."""
from mupath.train.pipeline import to_model_input, augment, batch_iterator
from mupath.train.optim import make_optimizer, lr_at
from mupath.train.loop import TrainConfig, TrainOutcome, train_path
from mupath.train.evaluate import logits_of, accuracy_of

__all__ = ["to_model_input", "augment", "batch_iterator", "make_optimizer", "lr_at", "TrainConfig",
           "TrainOutcome", "train_path", "logits_of", "accuracy_of"]
