"""One epoch of each EP stage, and the val score: what ep.train's main loop calls."""

from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from ep.model import episode_loss, predict, pretrain_loss
from fewshot.backbones import to_float
from fewshot.episodic import optimiser_step
from fewshot.evaluation import query_accuracies, task_tensors
from fewshot.runtime import epoch_seed


def pretrain_epoch(args, epoch, model, optimizer, X, labels, device) -> dict:
    """One pass over the train images in a random order drawn from (seed, epoch), in full batches (the order
    changes every epoch, so the last partial batch's images are left out of this epoch only)."""
    order = torch.from_numpy(np.random.default_rng(epoch_seed(args.seed, epoch)).permutation(len(X)))
    model.train()
    losses, accs = [], []
    for i in tqdm(range(len(X) // args.batch_size), desc=f"ep pretrain {epoch + 1}", leave=False, mininterval=2):
        rows = order[i * args.batch_size:(i + 1) * args.batch_size]
        loss, acc = pretrain_loss(model, to_float(X[rows].to(device)), labels[rows].to(device), args.rotation_weight)
        optimiser_step(optimizer, loss, epoch)
        losses.append(loss.item())
        accs.append(acc)
    return dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_acc=float(np.mean(accs)))


def finetune_epoch(args, epoch, model, optimizer, sampler, X, labels, device) -> dict:
    """--tasks-per-epoch tasks drawn from (seed, epoch), one optimiser step each (upstream: tasks_per_batch 1)."""
    rng = np.random.default_rng(epoch_seed(args.seed, epoch, stream=1))
    model.train()
    losses, accs = [], []
    for _ in tqdm(range(args.tasks_per_epoch), desc=f"ep finetune {epoch + 1}", leave=False, mininterval=2):
        task = sampler.sample(rng)
        classes = [labels[torch.from_numpy(rows)].to(device) for rows in (task.support, task.query)]
        loss, acc = episode_loss(model, *task_tensors(X, task, device), *classes, args.ways, args.classifier_weight)
        optimiser_step(optimizer, loss, epoch)
        losses.append(loss.item())
        accs.append(acc)
    return dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_acc=float(np.mean(accs)))


def evaluate_tasks(model, X, tasks, device) -> list:
    """Query accuracy of label propagation on each task (its unlabelled images, if any, join the graph); tasks of
    one shape are evaluated together."""
    return query_accuracies(partial(predict, model), X, tasks, device, unlabeled=True)


def evaluate(model, X, tasks, device, desc="eval", batch=1) -> list:
    """Per-task query accuracies, in eval mode (BatchNorm's running statistics, as upstream tests), `batch` tasks
    together (on a CPU one at a time is fastest, as for ep.test: BENCHMARKS.md)."""
    model.eval()
    return [acc for i in tqdm(range(0, len(tasks), batch), desc=desc, leave=False, mininterval=2)
            for acc in evaluate_tasks(model, X, tasks[i:i + batch], device)]
