"""The pieces of an epoch, free of Ray: learning-rate schedule, one training epoch, evaluation.

The trainable strings them together; the benchmark times ``train_epoch`` on its own.
"""
import math

import torch
import torch.nn.functional as F

from searchlab.config import SCHEDULES
from searchlab.data import batches, normalize
from searchlab.errors import UserError


def lr_at(optim, t):
    """Learning rate at fractional epoch ``t`` (0 = start of training) for an ``optim`` config.

    A pure function of time, so resuming needs no scheduler state.
    """
    lr, epochs, warmup = optim["lr"], optim["epochs"], optim["warmup_epochs"]
    if t < warmup:
        return lr * t / warmup
    if optim["schedule"] == "cosine":
        progress = (t - warmup) / max(epochs - warmup, 1e-12)
        return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if optim["schedule"] == "step":
        milestones = [m * epochs if m < 1 else m for m in optim["milestones"]]
        return lr * optim["gamma"] ** sum(t >= m for m in milestones)
    if optim["schedule"] == "constant":
        return lr
    raise UserError(f"unknown schedule {optim['schedule']!r}; valid schedules: {', '.join(SCHEDULES)}")


def make_optimizer(model, optim):
    return torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                           nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])


def train_epoch(model, data, optimizer, optim, epoch, augment, generator):
    """Train one epoch (``epoch`` counts from 0); return (mean loss, accuracy) over its images.

    Batches are shuffled and augmented with ``generator``, so a seeded generator replays the epoch.
    Sums stay on the device to avoid a host sync per step.
    """
    model.train()
    steps = math.ceil(len(data.train) / optim["batch_size"])
    loss_sum = torch.zeros((), device=data.train.x.device)
    correct = torch.zeros((), device=data.train.x.device)
    for step, (x, y) in enumerate(batches(data.train, optim["batch_size"], generator)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(optim, epoch + (step + 1) / steps)
        x = augment.images(x, generator)
        # Mixes (mixup, cutmix, manifold mixup) turn the labels into soft labels (N, classes).
        logits, target = augment.forward(model, normalize(x, data.mean, data.std), y, generator)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(x)
        correct += (logits.detach().argmax(1) == y).sum()  # against the unmixed labels
    mean_loss = loss_sum.item() / len(data.train)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"non-finite training loss ({mean_loss}) in epoch {epoch + 1}; "
                                 f"lower optim.lr (now {optim['lr']})")
    return mean_loss, correct.item() / len(data.train)


@torch.no_grad()
def evaluate(model, split, mean, std, batch_size=1000):
    """(mean loss, accuracy) of ``model`` on a split, in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in batches(split, batch_size):
        logits = model(normalize(x, mean, std))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / max(len(split), 1), correct / max(len(split), 1)
