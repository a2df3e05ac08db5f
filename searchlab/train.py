"""The pieces of an epoch, free of Ray: learning-rate schedule, phases, one training epoch,
evaluation.

Everything that changes over training is a pure function of time: ``lr_at`` for the learning rate,
``phase_at`` for the augmentation and regime. A resumed trial needs no scheduler state, only its
epoch. The trainable strings the pieces together; the benchmark times ``train_epoch`` on its own.
"""
import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from searchlab import splitbn
from searchlab.augment import mix_defaults, pipeline_specs
from searchlab.data import batches, normalize
from searchlab.regimes import REGIMES


# ---- learning rate --------------------------------------------------------------------------

def _cosine(optim, t):
    warmup = optim["warmup_epochs"]
    progress = (t - warmup) / max(optim["epochs"] - warmup, 1e-12)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _step(optim, t):
    # Milestones count from the start of training, warmup included, as torch's MultiStepLR.
    milestones = [m * optim["epochs"] if m < 1 else m for m in optim["milestones"]]
    return optim["gamma"] ** sum(t >= m for m in milestones)


def _constant(optim, t):
    return 1.0


# name -> the factor on optim.lr at fractional epoch t, once the warmup is over
SCHEDULES = {"cosine": _cosine, "step": _step, "constant": _constant}


def lr_at(optim, t):
    """Learning rate at fractional epoch ``t`` (0 = start of training) for an ``optim`` config.

    A pure function of time, so resuming needs no scheduler state.
    """
    if t < optim["warmup_epochs"]:
        return optim["lr"] * t / optim["warmup_epochs"]
    return optim["lr"] * SCHEDULES[optim["schedule"]](optim, t)


def learning_rate(cfg, t):
    """Learning rate of a resolved config at fractional epoch ``t``: ``lr_at`` of its optim group,
    and once refinement has begun, ``refine.lr`` ("final": the schedule's rate at its end, which for
    a step schedule is its last stage)."""
    start = refine_start(cfg)
    if start is None or t <= start:
        return lr_at(cfg["optim"], t)
    rate = cfg["refine"]["lr"]
    return lr_at(cfg["optim"], cfg["optim"]["epochs"]) if rate == "final" else rate


def make_optimizer(model, optim):
    return torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                           nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])


# ---- phases ---------------------------------------------------------------------------------

class Phase(NamedTuple):
    pipeline: object    # a preset name or op specs (augment.pipeline)
    mix: object         # None or a mix spec (augment.mix)
    regime: str         # a name in regimes.REGIMES


def total_epochs(cfg):
    """Epochs a resolved config trains: optim.epochs, plus refine.epochs appended after them."""
    r = _refine(cfg)
    return cfg["optim"]["epochs"] + (r.get("epochs", 0) if r.get("start_epoch") is None else 0)


def refine_start(cfg):
    """The epoch refinement starts at (``refine.start_epoch``, else optim.epochs), or None without it."""
    r = _refine(cfg)
    if r.get("start_epoch") is not None:
        return r["start_epoch"]
    return cfg["optim"]["epochs"] if r.get("epochs", 0) > 0 else None


def _refine(cfg):
    # Configs recorded before the refine group existed (older experiments on disk) have none.
    return cfg.get("refine") or {}


def phase_at(cfg, epoch):
    """The augmentation and regime of epoch ``epoch`` (counting from 0) of a resolved config.

    The base config holds from epoch 0; each entry of ``phases`` takes over once ``start_epoch``
    epochs have been trained, its ``augment`` and ``regime`` replacing the ones before it. Refinement
    is the last phase: from ``refine_start`` on, the ``refine.pipeline`` with no mix and the standard
    regime; or with ``refine.gradual``, the phase before it at a decaying intensity (``fade``).
    """
    augment, regime = cfg["augment"], cfg["regime"]
    for phase in cfg["phases"]:
        if epoch >= phase["start_epoch"]:
            augment = {**augment, **phase.get("augment", {})}
            regime = phase.get("regime", regime)
    start, r = refine_start(cfg), cfg["refine"]
    if start is None or epoch < start:
        return Phase(augment["pipeline"], augment["mix"], regime)
    if not r["gradual"]:
        return Phase(r["pipeline"], None, "standard")
    # Linear to 0 over the refinement epochs, at each epoch's midpoint: the epoch's mean intensity.
    intensity = 1 - (epoch - start + 0.5) / (total_epochs(cfg) - start)
    return Phase(*fade(augment["pipeline"], augment["mix"], r["pipeline"], intensity), regime)


def fade(pipeline, mix, keep, intensity):
    """A pipeline and mix at ``intensity`` (1: as they are, 0: off), for gradual refinement.

    Mixup and manifold mixup scale their alpha (alpha 0 mixes nothing); cutmix, and every op of
    ``pipeline`` that the refinement pipeline ``keep`` does not have (e.g. AutoAugment, cutout),
    scale their probability of being applied. Ops that ``keep`` has (flip, crop) stay as they are.
    """
    kept = pipeline_specs(keep)
    specs = [spec if spec in kept else {**spec, "p": spec.get("p", 1.0) * intensity}
             for spec in pipeline_specs(pipeline)]
    if mix is not None:
        key = "p" if mix["name"] == "cutmix" else "alpha"
        mix = {**mix, key: mix.get(key, mix_defaults(mix["name"])[key]) * intensity}
    return specs, mix


def phases(cfg):
    """Every phase of a resolved config, in order (refinement's first epoch included)."""
    starts = [0, *(p["start_epoch"] for p in cfg["phases"])]
    if refine_start(cfg) is not None:
        starts.append(refine_start(cfg))
    return [phase_at(cfg, epoch) for epoch in starts]


def split_bn(cfg):
    """Whether the config trains a split-BatchNorm model: some phase's regime is ``splitbn`` with
    ``splitbn.split`` on. Its evaluations then report every lambda of ``splitbn.lambdas``."""
    return cfg["splitbn"]["split"] and any(phase.regime == "splitbn" for phase in phases(cfg))


def prepare_model(model, cfg):
    """The model as the config's regimes train it: with split BatchNorm when ``split_bn(cfg)``; in
    channels-last memory format and compiled when ``speed`` says so."""
    if split_bn(cfg):
        splitbn.convert(model, cfg["splitbn"]["shared_affine"])
    speed = cfg["speed"]
    if speed["channels_last"]:
        # The batches are channels-last already (data.normalize); weights in the same layout spare
        # the convolutions a conversion of them at every call.
        model = model.to(memory_format=torch.channels_last)
    if speed["compile"]:
        # In place (nn.Module.compile), not torch.compile(model): the module keeps its type and its
        # state_dict keys (no "_orig_mod." prefix), so checkpoints load into a plain model (resume,
        # CKA), hooks and split BatchNorm branches reach its layers, and a deepcopy is a plain
        # module. The reset drops graphs of a reused worker's earlier trials, which would count
        # towards dynamo's recompile limit (beyond it, it runs uncompiled).
        torch.compiler.reset()
        model.compile(backend=speed["compile_backend"])
    return model


# ---- mixed precision ------------------------------------------------------------------------

# speed.amp -> the dtype of autocast regions (None: no autocast)
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp, device_type):
    """Autocast for the forward passes of ``speed.amp`` on a device type ("cpu", "cuda"): matmuls
    and convolutions in bf16 or fp16, losses and reductions in float32; a no-op for "none"."""
    return torch.autocast(device_type, dtype=AMP[amp], enabled=AMP[amp] is not None)


def make_scaler(amp, device_type):
    """The GradScaler of a trial: fp16's small range lets small gradients underflow to 0, so its
    loss is scaled up before backward and the gradients down before the step (steps with inf or
    NaN gradients are skipped and the scale lowered). For other precisions it passes through."""
    return torch.amp.GradScaler(device_type, enabled=amp == "fp16")


def regime_of(cfg, name):
    """The regime function ``name`` with its parameters from the config group of that name."""
    return partial(REGIMES[name], **cfg.get(name, {}))


# ---- one epoch ------------------------------------------------------------------------------

def train_epoch(model, data, optimizer, optim, epoch, augment, generator, regime=REGIMES["standard"],
                schedule=None, amp="none", scaler=None):
    """Train one epoch (``epoch`` counts from 0); return (mean loss, accuracy) over its images.

    ``regime`` decides what each batch becomes and what the loss is (``regimes.REGIMES``), with the
    epoch's ``augment`` pipeline. Batches are shuffled and augmented with ``generator``, so a
    seeded generator replays the epoch. The learning rate of each step is ``schedule(t)`` at the
    fractional epoch t where the step ends (default ``lr_at(optim, t)``; the trainable passes
    ``learning_rate`` of its config). Sums stay on the device to avoid a host sync per step.

    ``amp`` (``speed.amp``) runs the regime's forward passes and loss under autocast (augmentation
    stays on uint8: ``Pipeline.images`` turns autocast off), with ``scaler`` (``make_scaler``: the
    trainable keeps one for the whole trial and checkpoints it) for fp16.
    """
    schedule = schedule or partial(lr_at, optim)
    device_type = data.train.x.device.type
    scaler = make_scaler(amp, device_type) if scaler is None else scaler
    model.train()
    steps = math.ceil(len(data.train) / optim["batch_size"])
    loss_sum = torch.zeros((), device=data.train.x.device)
    correct = torch.zeros((), device=data.train.x.device)
    standardise = partial(normalize, mean=data.mean, std=data.std)
    for step, (x, y) in enumerate(batches(data.train, optim["batch_size"], generator)):
        for group in optimizer.param_groups:
            group["lr"] = schedule(epoch + (step + 1) / steps)
        with autocast(amp, device_type):
            loss, logits = regime(model, x, y, augment, generator, standardise)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
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
