"""Deep AutoAugment's policy search (Zheng et al., ICLR 2022) as plain PyTorch functions, no Ray.

A K-layer policy is searched one layer at a time on a fixed, pretrained proxy network: layer k is a
softmax over the transformations of a table (``ops.deepaa_table()``: 139), moved by Adam so that the
gradient of augmented training images (g_T) points where the gradient of clean validation images of
the same class (g_V) points. The reward of transformation i is d cos(g_V, g_T) / d p_i, for all i
at once from one forward-mode Jacobian-vector product. This follows the authors' code
(AIoT-MLSys-Lab/DeepAA, DeepAA_search.py); where their paper says otherwise, a comment says so.

API (a trainable or searcher strings these together; tests/test_deepaa.py shows each in use)

    Proxy network
        PRETRAIN, PRETRAIN_SIZE, PRETRAIN_CLIP         the recipe; PRETRAIN is an ``optim`` dict
                                                       (train.lr_at, train.make_optimizer)
        pretrain_optimizer(model, optim=PRETRAIN)      -> torch.optim.SGD
        pretrain_epoch(model, images, optimizer, epoch, generator, mean, std, optim=PRETRAIN,
                       clip=PRETRAIN_CLIP)             -> mean training loss of the epoch (float)
        freeze(model, mean, std)                       -> Proxy(model, params, mean, std): eval
                                                       mode, params = conv/linear weights and biases

    Data
        search_pools(data, pretrain_size=5000)         -> Pools(pretrain, train, val, mean, std)
        sample_points(pools, generator, points=16, val_images=64)
                                                       -> Points(labels [P], train_x [P, C, H, W],
                                                                 val_x [P, V, C, H, W])

    Transformations
        Space(table=ops.deepaa_table(), fill=DEEPAA_FILL, apply=None)
                                                       space(x, entries, generator) applies table
                                                       entry entries[i] to image i; space.names
        sample_layers(x, layer_probs, generator, space)
                                                       -> (images, entries [L, N]): a policy applied
                                                       draw for draw as policies.deepaa (mirror=False)

    Search
        Settings(points=16, val_images=64, exp_gt_factor=4, exp_g=16, std_penalty=1.0, lr=0.025,
                 betas=(0.9, 0.999), eps=1e-7, steps=1024, init="identity", chunk=256,
                 cos_after=True)
        LayerSearch(entries, settings=None, seed=0)    one layer's state: .logits, .optimizer
                                                       (Adam), .step, .generator, .probs;
                                                       state_dict() / load_state_dict(state)
        search_step(proxy, pools, frozen, layer, space=None, settings=None)
                                                       -> the step's log (a dict, below)
        search_layer(proxy, pools, frozen, layer, space=None, settings=None, until=None,
                     on_step=None)                     -> list of the steps' logs

    Pieces of a step (public for tests, the benchmark and other searchers)
        point_images(train_x, frozen, probs, generator, space, settings)
                                                       -> PointImages(gt, gt_entries, gt_scale, jvp)
                                                       for all points; images[j] is point j's
        point_rewards(proxy, label, val_x, images, probs, chunk=256)
                                                       -> PointResult(rewards [E], cos, label,
                                                                      g_v, images)
        cos_with(proxy, result, probs, chunk=256)      -> cos(g_V, g_T) of a point for other probs
        gradient(proxy, x, y, weights, chunk=256)      -> sum_n weights_n grad L_n, flat [size]
        directional(proxy, x, y, tangent, chunk=256)   -> [N] <grad L_n, tangent> by JVP
        tangent(g_v, g_t), cosine(a, b)
        aggregate(rewards [P, E], layer, std_penalty=1.0)
                                                       -> [E]
        surrogate_loss(logits, rewards, scale=1.0)     -> the policy loss Adam minimises

    Export
        policy_probs(logits_per_layer)                 -> float32 [K, E], what export writes
        export_policy(path, logits_per_layer, table=None)
                                                       -> the float32 probabilities written
                                                       (policies.save_policy; load with
                                                       policies.load_policy or deepaa(policy=path))

``frozen`` is the probabilities of the layers searched before, [k - 1, E] (empty or None at layer
1). A layer resumes exactly from ``LayerSearch.state_dict()``: logits, Adam's state, the step count
and the generator's state are all of it, a few kB.

The log of a step: ``layer``, ``step`` (steps done, this one included), ``cos_before`` (mean over
the points of cos(g_V, g_T) with the policy the step started from) and ``cos_before_std``,
``cos_after`` (the same points and augmented images, weighted by the updated policy; None when
``Settings.cos_after`` is off), ``reward_mean`` (over points and transformations), ``reward_std``
(the std over points, averaged over transformations: what the penalty at layers >= 2 subtracts),
``entropy`` (nats) and ``top5`` [(transformation name, probability)].

Cost of one step, per point (B = one image through forward and backward, about 3 forward passes;
J = one image through the JVP, also about 3): layer 1: 64 B (g_V) + 139 B (g_T) + 139 J + 139 B
(cos_after); layer k >= 2: 64 B + 556 B + 2224 J + 556 B (cos_after). Each point has its own
tangent, so the model work runs point by point, in chunks of ``Settings.chunk`` images; the
augmentation of all points runs batched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp

from searchlab.augment import ops, policies
from searchlab.data import Split, batches, normalize
from searchlab.train import lr_at, make_optimizer

# ------------------------------------------------------------------------------------------------
# The proxy network and its pretraining (DeepAA_search.pretrain, DeepAA_utils.get_optim_net)
# ------------------------------------------------------------------------------------------------

# WRN-40-2, 45 epochs of batch 128 (drop_last) on the first 5000 non-validation images; SGD with
# Nesterov momentum 0.9, lr 0.1 cosine to ~0 (theirs ends at 1e-7), no warmup. The paper says 4000
# images (section 4.1); the code's --pretrain_size and README use 5000.
PRETRAIN = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "batch_size": 128,
            "epochs": 45, "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 1.0}
PRETRAIN_SIZE = 5000
PRETRAIN_CLIP = 5.0  # global gradient norm
# RandCrop (pad 4, mean-colour fill), RandFlip, RandCutout 16, each with p = 1: the same table
# entries the search uses, applied in this order (get_augmentation's default_post_aug).
PRETRAIN_AUGMENT = (("pad_crop", 4), ("flip", None), ("cutout", 16))


def _decayed(model):
    """The parameters their Keras l2 regulariser covers (resnet.py): conv kernels and biases and the
    dense kernel; not the dense bias, not BN."""
    return [p for m in model.modules() for name, p in m.named_parameters(recurse=False)
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and name == "weight")]


def pretrain_optimizer(model, optim=PRETRAIN):
    """SGD as train.make_optimizer builds it, without weight decay: pretrain_epoch adds the decay
    to the gradient itself, before clipping (see there)."""
    return make_optimizer(model, {**optim, "weight_decay": 0.0})


def pretrain_augment(x, generator, fill=policies.DEEPAA_FILL):
    """The pretraining augmentation: crop, flip, cutout, each entry applied to every image."""
    table = list(PRETRAIN_AUGMENT)
    for k in range(len(table)):
        x = policies.apply_entries(x, torch.full((len(x),), k), generator, table, fill=fill)
    return x


def pretrain_epoch(model, images, optimizer, epoch, generator, mean, std, optim=PRETRAIN,
                   clip=PRETRAIN_CLIP):
    """Train the proxy one epoch (``epoch`` counts from 0) on ``images`` (a data.Split); return the
    mean cross-entropy of its steps.

    A trainable calls this epoch by epoch with ``pretrain_optimizer(model)`` and checkpoints the
    model, the optimizer and the generator between epochs. Batches are shuffled and augmented with
    ``generator``; the last partial batch is dropped. ``mean`` and ``std`` standardise the images
    (the pools' statistics; theirs are fixed CIFAR-10 constants, within 0.001 of these).

    As in their ``train_step``: the Keras l2 penalty (2.5e-4 |w|^2, i.e. 5e-4 w in the gradient, on
    ``_decayed``) is part of the loss, so it enters the gradient before the global norm is clipped
    to ``clip``. The learning rate is the cosine at the step's start (their TF schedule gets the
    iteration count before it is incremented). torch's Nesterov SGD equals Keras' while the rate is
    constant; Keras folds the rate into its momentum, so under the cosine they differ slightly.
    """
    model.train()
    steps = len(images) // optim["batch_size"]
    if steps == 0:
        raise ValueError(f"pretrain_epoch: {len(images)} images make no full batch of {optim['batch_size']}")
    decayed = _decayed(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros((), device=images.x.device)
    for step, (x, y) in enumerate(batches(images, optim["batch_size"], generator, drop_last=True)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(optim, epoch + step / steps)
        x = pretrain_augment(x, generator)
        loss = F.cross_entropy(model(normalize(x, mean, std)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in decayed:
                p.grad.add_(p, alpha=optim["weight_decay"])
        torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()
        total += loss.detach()
    mean_loss = total.item() / steps
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"non-finite proxy pretraining loss ({mean_loss}) in epoch {epoch + 1}")
    return mean_loss


@dataclass
class Proxy:
    """A frozen proxy: the model in eval mode (BN uses its running statistics and never updates
    them), and ``params``, the conv and linear weights and biases the gradients are taken over.

    As in their search: BN layers are set non-trainable, which in Keras also means inference mode,
    every search forward uses training=False, and the vectors g_V, g_T and the tangent cover
    ``model.trainable_variables`` only (conv and dense kernels and biases). The search loss is the
    plain cross-entropy, without the l2 penalty. Nothing here updates the proxy.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def size(self):
        """The length of the parameter vector."""
        return sum(p.numel() for p in self.params.values())

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype

    @property
    def device(self):
        return next(iter(self.params.values())).device

    def inputs(self, x):
        """uint8 images -> standardised inputs in the proxy's dtype: data.normalize's arithmetic, done
        in that dtype (in float32 the same values as data.normalize)."""
        x = x.contiguous(memory_format=torch.channels_last).to(self.dtype).div_(255)
        return (x - self.mean.to(self.dtype)[:, None, None]) / self.std.to(self.dtype)[:, None, None]


def freeze(model, mean, std):
    """The proxy for the search: eval mode, every parameter frozen, the conv/linear parameter dict."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = {f"{name}.{key}" if name else key: p.detach()
              for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))
              for key, p in module.named_parameters(recurse=False)}
    device = next(iter(params.values())).device
    return Proxy(model, params, mean.to(device), std.to(device))


def _losses(proxy, params, inputs, y):
    return F.cross_entropy(functional_call(proxy.model, params, (inputs,)), y, reduction="none")


def _flatten(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def gradient(proxy, x, y, weights, chunk=256):
    """sum_n weights[n] grad L(x_n, y_n) over the proxy's parameters, as one flat vector: one
    weighted backward pass per chunk of images (their output_gradients VJP), never one per image."""
    proxy.model.eval()
    leaves = {k: v.detach().requires_grad_() for k, v in proxy.params.items()}
    total = None
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        loss = (_losses(proxy, leaves, proxy.inputs(x[part]), y[part]) * weights[part]).sum()
        grads = _flatten(torch.autograd.grad(loss, list(leaves.values())))
        total = grads if total is None else total + grads
    return total


def directional(proxy, x, y, tangent, chunk=256):
    """<grad L(x_n, y_n), tangent> for every image n: per-example losses through one forward-mode
    JVP (torch.func.jvp over functional_call) per chunk. The per-example gradients are never
    formed (their ForwardAccumulator + acc.jvp(loss))."""
    proxy.model.eval()
    sizes = [p.numel() for p in proxy.params.values()]
    tangents = {k: t.view_as(p) for (k, p), t in zip(proxy.params.items(), tangent.split(sizes))}
    out = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            inputs, labels = proxy.inputs(x[start:start + chunk]), y[start:start + chunk]
            _, d = jvp(lambda p: _losses(proxy, p, inputs, labels), (proxy.params,), (tangents,))
            out.append(d)
    return torch.cat(out)


def tangent(g_v, g_t):
    """t = g_V - g_T (g_V . g_T) / |g_T|^2: then <g_i, t> / (|g_T| |g_V|) = d cos(g_V, g_T) / d p_i
    for g_T = sum_i p_i g_i."""
    return g_v - g_t * (g_v @ g_t) / (g_t @ g_t)


def cosine(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------------
# Data: pools and search points (DeepAA_utils.get_dataset, PrefetchGenerator)
# ------------------------------------------------------------------------------------------------

@dataclass
class Pools:
    """Three disjoint sets of images: the proxy's pretraining images, the pool the search draws its
    one training image per point from, and the validation pool."""

    pretrain: Split
    train: Split
    val: Split
    mean: torch.Tensor
    std: torch.Tensor


def search_pools(data, pretrain_size=PRETRAIN_SIZE):
    """Pools of a data.Dataset: the first ``pretrain_size`` training images, the rest of the training
    images, and the validation split. Their code takes the first 5000 of the 40,000 non-validation
    images and the last 10,000 as validation pool; load_dataset has shuffled both with its split
    seed, so load it with val_size=10000 to match the sizes."""
    if not 0 < pretrain_size < len(data.train):
        raise ValueError(f"pretrain_size must be in 1..{len(data.train) - 1} (the training split has "
                         f"{len(data.train)} images), got {pretrain_size}")
    train = data.train
    return Pools(train[:pretrain_size], train[pretrain_size:], data.val, data.mean, data.std)


@dataclass
class Points:
    """A step's search points: point j is class labels[j], one training image of that class and
    val_images validation images of it."""

    labels: torch.Tensor   # [P]
    train_x: torch.Tensor  # [P, C, H, W] uint8
    val_x: torch.Tensor    # [P, V, C, H, W] uint8


def sample_points(pools, generator, points=16, val_images=64):
    """Draw ``points`` search points: each a class c uniform over the classes that have a training
    image and ``val_images`` validation images, one training image of c (uniform over the pool) and
    ``val_images`` distinct validation images of c (a random subset; theirs is a window of a shuffled
    class list). Every draw comes from ``generator``."""
    device = pools.train.x.device
    classes = torch.unique(torch.cat([pools.train.y, pools.val.y]))
    by_class = {int(c): ((pools.train.y == c).nonzero().squeeze(1), (pools.val.y == c).nonzero().squeeze(1))
                for c in classes}
    eligible = [c for c, (t, v) in by_class.items() if len(t) >= 1 and len(v) >= val_images]
    if not eligible:
        counts = {c: len(v) for c, (_, v) in by_class.items()}
        raise ValueError(f"sample_points: no class has {val_images} validation images (val_images) and a "
                         f"training image; validation images per class: {counts}")
    labels, train_idx, val_idx = [], [], []
    for c in torch.randint(0, len(eligible), (points,), generator=generator, device=generator.device).tolist():
        train_of_c, val_of_c = by_class[eligible[c]]
        pick = torch.randint(0, len(train_of_c), (1,), generator=generator, device=generator.device).to(device)
        subset = torch.randperm(len(val_of_c), generator=generator, device=generator.device)[:val_images]
        labels.append(eligible[c])
        train_idx.append(train_of_c[pick])
        val_idx.append(val_of_c[subset.to(device)])
    train_idx, val_idx = torch.cat(train_idx), torch.stack(val_idx)
    return Points(torch.tensor(labels, device=device), pools.train.x[train_idx], pools.val.x[val_idx])


# ------------------------------------------------------------------------------------------------
# Transformations
# ------------------------------------------------------------------------------------------------

def _default_table():
    return tuple(ops.deepaa_table())


@dataclass(frozen=True)
class Space:
    """The transformations a layer chooses from: ``table`` entries (op name, magnitude), applied by
    ``policies.apply_entries`` with ``fill`` (crop padding and cutout), or by ``apply(x, entries,
    generator)`` when given (tests use small deterministic ones). The search never mirrors the sign
    of geometric ops: their search applies each level as it is (mirroring is a training-time flag of
    ``policies.deepaa``)."""

    table: tuple = field(default_factory=_default_table)
    fill: tuple = policies.DEEPAA_FILL
    apply: Callable | None = None

    def __len__(self):
        return len(self.table)

    def __call__(self, x, entries, generator):
        if self.apply is not None:
            return self.apply(x, entries, generator)
        return policies.apply_entries(x, entries, generator, self.table, fill=self.fill)

    @property
    def names(self):
        return [name if magnitude is None else f"{name}({magnitude:g})" for name, magnitude in self.table]


def sample_layers(x, layer_probs, generator, space):
    """Apply a policy [L, E]: for each layer, every image draws an entry from that layer's row and it
    is applied. Returns the images and the entries drawn [L, N]. With the default space this is
    ``policies.deepaa(x, generator, layer_probs, mirror=False)`` draw for draw."""
    layer_probs = torch.as_tensor(layer_probs, dtype=torch.float64).reshape(-1, len(space))
    entries = []
    for row in layer_probs:
        entries.append(policies.sample_entries(row, len(x), generator, x.device))
        x = space(x, entries[-1], generator)
    return x, torch.stack(entries) if entries else torch.zeros((0, len(x)), dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# One search step
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """The search's counts and optimiser. Defaults are the authors' CIFAR settings (README
    command): 16 points (--train_same_labels), 64 validation images, g_T from 4 x 139 samples
    (--EXP_gT_factor), rewards from 16 prefixes (--EXP_G), 1024 steps per layer (--search_bno; the
    paper says 512, and the author suggests halving these counts for an 8x cheaper search, issue #6).
    ``chunk``: images per forward/backward/JVP call (their _PARALLEL_BATCH for WRN-40-2).
    ``cos_after``: measure cos(g_V, g_T) again after the update (one more weighted backward over the
    g_T images per point, about a third of a layer-1 step and a sixth of a layer-k step)."""

    points: int = 16
    val_images: int = 64
    exp_gt_factor: int = 4
    exp_g: int = 16
    std_penalty: float = 1.0
    lr: float = 0.025
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-7  # TF's Adam default (their optimiser); torch's is 1e-8
    steps: int = 1024
    init: str = "identity"
    chunk: int = 256
    cos_after: bool = True

    def __post_init__(self):
        for name in ("points", "val_images", "exp_gt_factor", "exp_g", "steps", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"deepaa settings: {name} must be a positive integer, got {value!r}")
        if self.init not in INITS:
            raise ValueError(f"deepaa settings: init must be one of {', '.join(INITS)}, got {self.init!r}")


def _identity_init(entries):
    # policy.py: [8, 0, ..., 0] minus its mean, so p(identity) = e^8 / (e^8 + 138) = 0.956 at the
    # start of every layer. The paper does not mention it.
    logits = torch.zeros(entries, dtype=torch.float64)
    logits[0] = 8.0
    return logits - logits.mean()


def _uniform_init(entries):
    return torch.zeros(entries, dtype=torch.float64)


INITS = {"identity": _identity_init, "uniform": _uniform_init}


class LayerSearch:
    """The state of one layer's search: logits (float64), Adam over them, steps done, and the
    generator every draw of the search comes from. ``state_dict()`` is all a checkpoint needs."""

    def __init__(self, entries, settings=None, seed=0, device="cpu"):
        settings = settings or Settings()
        self.logits = INITS[settings.init](entries).to(device).requires_grad_()
        self.optimizer = torch.optim.Adam([self.logits], lr=settings.lr, betas=tuple(settings.betas),
                                          eps=settings.eps)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.step = 0

    @property
    def probs(self):
        return torch.softmax(self.logits.detach(), 0)

    def state_dict(self):
        return {"logits": self.logits.detach().clone(), "adam": self.optimizer.state_dict(),
                "step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["adam"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])


@dataclass
class PointImages:
    """Augmented images of a step's points, or of one point (``images[j]``, without the P axis).

    ``gt`` [P, M, C, H, W]: the images g_T is taken over, with g_T = sum_m gt_scale[m] *
    p[gt_entries[m]] * grad L(gt[m]) for the current layer's p: at layer 1 the E transformations of
    the image (scale 1, so g_T = sum_i p_i g_i); at layer k, M = exp_gt_factor * E full-depth samples
    (scale 1 / (M p[entry]): the plain mean 1/M at the p they were drawn from, an importance weight
    for another p). ``jvp`` [P, G, E, C, H, W]: G prefixes (1 at layer 1), each followed by every
    transformation of the current layer.
    """

    gt: torch.Tensor
    gt_entries: torch.Tensor  # [P, M], on the CPU
    gt_scale: torch.Tensor    # [P, M] float64, on the CPU
    jvp: torch.Tensor

    def __getitem__(self, j):
        return PointImages(self.gt[j], self.gt_entries[j], self.gt_scale[j], self.jvp[j])

    def gt_weights(self, probs):
        """The weights of the ``gt`` images in g_T for the current layer's policy ``probs``."""
        return self.gt_scale * torch.as_tensor(probs, dtype=torch.float64).cpu()[self.gt_entries]


def _frozen(frozen, entries):
    """The earlier layers' probabilities as float64 [k - 1, entries] on the CPU (None: none)."""
    if frozen is None:
        return torch.zeros((0, entries), dtype=torch.float64)
    frozen = torch.as_tensor(np.asarray(frozen) if not torch.is_tensor(frozen) else frozen)
    if frozen.numel() % entries or (frozen.ndim == 2 and frozen.shape[1] != entries):
        raise ValueError(f"frozen layers must have shape [k - 1, {entries}], got {list(frozen.shape)}")
    return frozen.detach().to("cpu", torch.float64).reshape(-1, entries)


def point_images(train_x, frozen, probs, generator, space, settings):
    """The augmented images of a step's points (``train_x`` [P, C, H, W]) at layer len(frozen) + 1,
    for all points in a few batched calls."""
    n_points, shape, e = len(train_x), train_x.shape[1:], len(space)
    probs = torch.as_tensor(probs, dtype=torch.float64).cpu()
    frozen = _frozen(frozen, e)
    every = torch.arange(e, device=train_x.device)
    if len(frozen) == 0:
        # Layer 1: every transformation once (their EXP = 1, random ops drawn once); the same images
        # give g_T and the rewards.
        images = space(train_x.repeat_interleave(e, 0), every.repeat(n_points), generator).view(n_points, e, *shape)
        return PointImages(images, torch.arange(e).repeat(n_points, 1), torch.ones(n_points, e, dtype=torch.float64),
                           images[:, None])
    # Layer k: g_T over M copies, each with a sequence of k entries drawn from layers 1..k (the
    # current layer included, at its current softmax); then G copies with a prefix drawn from layers
    # 1..k-1, each followed by all E entries of layer k.
    m, g = settings.exp_gt_factor * e, settings.exp_g
    gt, drawn = sample_layers(train_x.repeat_interleave(m, 0), torch.cat([frozen, probs[None]]), generator, space)
    last = drawn[-1].view(n_points, m).cpu()
    scale = 1.0 / (m * probs[last])
    prefixed, _ = sample_layers(train_x.repeat_interleave(g, 0), frozen, generator, space)
    jvp_images = space(prefixed.repeat_interleave(e, 0), every.repeat(n_points * g), generator)
    return PointImages(gt.view(n_points, m, *shape), last, scale, jvp_images.view(n_points, g, e, *shape))


@dataclass
class PointResult:
    """One point's rewards [E] (d cos / d p_i, averaged over prefixes at layers >= 2) and cos(g_V,
    g_T), with what measuring cos again for another p needs (its label, g_V and images)."""

    rewards: torch.Tensor
    cos: float
    label: int
    g_v: torch.Tensor
    images: PointImages


def _labels(label, n, proxy):
    return torch.full((n,), int(label), device=proxy.device)


def point_rewards(proxy, label, val_x, images, probs, chunk=256):
    """Rewards of one point: class ``label``, its validation images ``val_x`` [V, C, H, W] and its
    augmented ``images`` (a one-point PointImages), at the current layer's policy ``probs``.

    g_V: mean gradient of the validation images; g_T: one weighted backward over ``images.gt``; the
    tangent t = g_V - g_T (g_V . g_T) / |g_T|^2; r_i = <grad L(t_i(x)), t> / (|g_T| |g_V|) for every
    image of ``images.jvp`` [G, E, ...] from JVPs, averaged over G (DeepAA_search.py
    policy_gradient_stage1/2).
    """
    device, dtype = proxy.device, proxy.dtype
    n_val, (g, e) = len(val_x), images.jvp.shape[:2]
    g_v = gradient(proxy, val_x, _labels(label, n_val, proxy),
                   torch.full((n_val,), 1.0 / n_val, dtype=dtype, device=device), chunk)
    g_t = gradient(proxy, images.gt, _labels(label, len(images.gt), proxy),
                   images.gt_weights(probs).to(device, dtype), chunk)
    t = tangent(g_v, g_t)
    d = directional(proxy, images.jvp.flatten(0, 1), _labels(label, g * e, proxy), t, chunk)
    rewards = d.view(g, e).mean(0) / (g_t.norm() * g_v.norm())
    return PointResult(rewards.double().cpu(), cosine(g_v, g_t), int(label), g_v, images)


def cos_with(proxy, result, probs, chunk=256):
    """cos(g_V, g_T) of a point for the policy ``probs``, on the images its rewards came from."""
    images = result.images
    weights = images.gt_weights(probs).to(proxy.device, proxy.dtype)
    return cosine(result.g_v, gradient(proxy, images.gt, _labels(result.label, len(images.gt), proxy), weights, chunk))


def aggregate(rewards, layer, std_penalty=1.0):
    """Rewards [points, E] -> [E]: the mean over points at layer 1; mean - std_penalty * std (the
    population std, tf.math.reduce_std) at layers >= 2 (the paper's Eq. 10; c = 1 is hard-coded in
    their code)."""
    if layer == 1:
        return rewards.mean(0)
    return rewards.mean(0) - std_penalty * rewards.std(0, correction=0)


def loss_scale(layer, points):
    # Their policy losses are scaled by 0.25 (layer 1) and by the number of points (layers >= 2);
    # Adam is scale-free except through its epsilon, so this only matters where gradients are tiny.
    return 0.25 if layer == 1 else float(points)


def surrogate_loss(logits, rewards, scale=1.0):
    """-sum_i r_i softmax(logits)_i * scale: its gradient in the logits is -scale times the gradient
    of cos(g_V, g_T) through p = softmax(logits)."""
    return -(rewards.to(logits.dtype) * torch.softmax(logits, 0)).sum() * scale


def _entropy(p):
    return float(-(p * p.clamp_min(1e-300).log()).sum())


def search_step(proxy, pools, frozen, layer, space=None, settings=None, rewards=None):
    """One step of the search of layer len(frozen) + 1: draw the points, compute their rewards,
    take one Adam step on ``layer``'s logits. Returns the step's log (see the module docstring).

    ``rewards`` replaces ``point_rewards`` (same signature): the benchmark times the step with a
    per-transformation backward loop in its place."""
    rewards = rewards or point_rewards
    space = space or Space()
    settings = settings or Settings()
    frozen = _frozen(frozen, len(space))
    k = len(frozen) + 1
    proxy.model.eval()
    probs = layer.probs.cpu()
    points = sample_points(pools, layer.generator, settings.points, settings.val_images)
    images = point_images(points.train_x, frozen, probs, layer.generator, space, settings)
    results = [rewards(proxy, label, points.val_x[j], images[j], probs, settings.chunk)
               for j, label in enumerate(points.labels.tolist())]
    per_point = torch.stack([r.rewards for r in results])
    if not torch.isfinite(per_point).all():
        raise FloatingPointError(f"non-finite DeepAA rewards at layer {k}, step {layer.step + 1}: a zero "
                                 "gradient (g_T or g_V) on the proxy")
    reward = aggregate(per_point, k, settings.std_penalty).to(layer.logits.device)

    layer.optimizer.zero_grad(set_to_none=True)
    surrogate_loss(layer.logits, reward, loss_scale(k, settings.points)).backward()
    layer.optimizer.step()
    layer.step += 1

    after = layer.probs.cpu()
    cos = torch.tensor([r.cos for r in results], dtype=torch.float64)
    top = torch.topk(after, min(5, len(space)))
    return {
        "layer": k,
        "step": layer.step,
        "cos_before": float(cos.mean()),
        "cos_before_std": float(cos.std(correction=0)),
        "cos_after": (float(np.mean([cos_with(proxy, r, after, settings.chunk) for r in results]))
                      if settings.cos_after else None),
        "reward_mean": float(per_point.mean()),
        "reward_std": float(per_point.std(0, correction=0).mean()),
        "entropy": _entropy(after),
        "top5": [(space.names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())],
    }


def search_layer(proxy, pools, frozen, layer, space=None, settings=None, until=None, on_step=None):
    """Run ``search_step`` until ``layer.step`` reaches ``until`` (default ``settings.steps``);
    ``on_step(log)`` after each step (e.g. to report and checkpoint). Returns the logs."""
    settings = settings or Settings()
    until = settings.steps if until is None else until
    logs = []
    while layer.step < until:
        logs.append(search_step(proxy, pools, frozen, layer, space, settings))
        if on_step is not None:
            on_step(logs[-1])
    return logs


# ------------------------------------------------------------------------------------------------
# Export (DeepAA_utils.save_policy's layout, through policies.save_policy)
# ------------------------------------------------------------------------------------------------

def policy_probs(logits_per_layer):
    """Each layer's softmax as float32 [K, E]: exactly what a policy file stores, so sampling from
    these and from the reloaded file draws the same."""
    return np.stack([torch.softmax(torch.as_tensor(logits, dtype=torch.float64).detach(), 0).float().cpu().numpy()
                     for logits in logits_per_layer])


def export_policy(path, logits_per_layer, table=None):
    """Write the searched layers as a policy file; returns the probabilities written."""
    probs = policy_probs(logits_per_layer)
    policies.save_policy(path, probs, None if table is None else list(table))
    return probs
