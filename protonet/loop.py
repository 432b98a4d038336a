"""One training epoch and the val score: what protonet.train's main loop calls, and protonet.test's evaluation."""

from functools import partial

import numpy as np
from tqdm import tqdm

from fewshot.episodic import optimiser_step
from fewshot.evaluation import query_accuracies, task_tensors
from fewshot.runtime import epoch_seed
from protonet.model import episode_loss, predict


def train_epoch(args, epoch, model, optimizer, sampler, X, device) -> dict:
    """--tasks-per-epoch tasks drawn from (seed, epoch), one Adam step each (Snell et al.: one episode a step).
    The tasks' labels are the ways 0..N-1 of the sampler's (pseudo-)classes; nothing else of the labels is read."""
    rng = np.random.default_rng(epoch_seed(args.seed, epoch, stream=1))
    model.train()
    losses, accs = [], []
    for _ in tqdm(range(args.tasks_per_epoch), desc=f"protonet epoch {epoch + 1}", leave=False, mininterval=2):
        loss, acc = episode_loss(model, *task_tensors(X, sampler.sample(rng), device), args.ways)
        optimiser_step(optimizer, loss, epoch)
        losses.append(loss.item())
        accs.append(acc)
    return dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_acc=float(np.mean(accs)))


def evaluate_tasks(model, X, tasks, device) -> list:
    """Query accuracy of the nearest prototype on each task; tasks of one shape are evaluated together. A task's
    unlabelled images, if any, are not used (as maml.test ignores them): the support and query sets are those of
    the plain tasks, so the accuracies are those of the plain tasks too."""
    return query_accuracies(partial(predict, model), X, tasks, device)


def evaluate(model, X, tasks, device, desc="eval", batch=1) -> list:
    """Per-task query accuracies, in eval mode (BatchNorm's running statistics), `batch` tasks together."""
    model.eval()
    return [acc for i in tqdm(range(0, len(tasks), batch), desc=desc, leave=False, mininterval=2)
            for acc in evaluate_tasks(model, X, tasks[i:i + batch], device)]
