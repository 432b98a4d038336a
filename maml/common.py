"""What maml.train and maml.selection share: evaluating a model on many tasks, and the score a run selects its
model by."""

import torch
from tqdm import tqdm

from fewshot.evaluation import task_tensors
from maml.maml import evaluate_task


def evaluate(model, X: torch.Tensor, tasks: list, steps: int, lr: float, device, desc="eval", bar=True) -> list:
    """Per-task query accuracies after `steps` adaptation steps from the model's initialisation; `bar`: show a
    progress bar (under torchrun, rank 0 alone does)."""
    model.eval()  # no-op for the batch-statistics network, kept for models that care
    return [evaluate_task(model, *task_tensors(X, t, device), steps, lr)[0]
            for t in tqdm(tasks, desc=desc, leave=False, mininterval=2, disable=not bar)]


def selection_score(row: dict) -> float:
    """The score maml.train selects its best epoch by, from that epoch's metrics row: the val accuracy, or without a
    val split the (zero-based) epoch, so that the latest wins. Of equal scores the later epoch is kept."""
    return row.get("val_acc", float(row["epoch"] - 1))
