"""What maml.train and maml.test share: turning tasks into tensors, evaluating a model on many tasks, and the
score a run selects its model by."""

import numpy as np
import torch
from tqdm import tqdm

from fewshot.backbones import to_float
from fewshot.episodes import Task
from maml.maml import evaluate_task


def task_tensors(X: torch.Tensor, task: Task, device):
    """uint8 NHWC image bank + task -> (xs, ys, xq, yq) float tensors on device."""
    def rows(idx):
        return to_float(X[torch.from_numpy(np.asarray(idx))].to(device))

    def labels(y):
        return torch.from_numpy(np.asarray(y)).long().to(device)

    return rows(task.support), labels(task.support_y), rows(task.query), labels(task.query_y)


def evaluate(model, X: torch.Tensor, tasks: list, steps: int, lr: float, device, desc="eval") -> list:
    """Per-task query accuracies after `steps` adaptation steps from the model's initialisation."""
    model.eval()  # no-op for the batch-statistics network, kept for models that care
    return [evaluate_task(model, *task_tensors(X, t, device), steps, lr)[0]
            for t in tqdm(tasks, desc=desc, leave=False, mininterval=2)]


def selection_score(row: dict) -> float:
    """The score maml.train selects its best epoch by, from that epoch's metrics row: the val accuracy, or without a
    val split the (zero-based) epoch, so that the latest wins. Of equal scores the later epoch is kept."""
    return row.get("val_acc", float(row["epoch"] - 1))
