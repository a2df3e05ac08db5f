"""Batch-level mixes: mixup, cutmix and manifold mixup, on normalised float images.

Mixup and cutmix return the mixed inputs and soft labels (N, classes). Manifold mixup mixes hidden
states inside a model: here it only draws where and how; ``regimes.mixed_forward`` places it in the
model, so that this package needs no model code. As in the reference implementations, one mixing
weight and one partner permutation are drawn per batch. Beta draws come
from a NumPy generator seeded from the torch generator, since torch's Beta sampler takes no
generator and the mix must replay under a seed.
"""
import numpy as np
import torch
import torch.nn.functional as F

from searchlab.augment.stochastic import box_mask


def _beta(alpha, generator):
    if alpha <= 0:  # as the mixup reference: no mixing (gradual refinement takes alpha to 0)
        return 1.0
    seed = torch.randint(2**62, (1,), generator=generator, device=generator.device).item()
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _partners(n, generator, device):
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def soft(y, num_classes):
    return y if y.ndim == 2 else F.one_hot(y, num_classes).float()


def mixup(x, y, generator, alpha=1.0):
    """Zhang et al. (2018): x = lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha)."""
    lam = _beta(alpha, generator)
    perm = _partners(len(x), generator, x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def cutmix(x, y, generator, alpha=1.0, p=1.0):
    """Yun et al. (2019): paste a box of x[perm]; the label weight is the box's actual area.

    The box has side sqrt(1 - lam) of the image's, a uniform centre, and is clipped at the border,
    so the pasted area (and with it the label weight) is measured after clipping.
    """
    if torch.rand(1, generator=generator, device=generator.device).item() >= p:
        return x, y
    n, _, h, w = x.shape
    lam = _beta(alpha, generator)
    perm = _partners(n, generator, x.device)
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = (torch.randint(0, s, (1,), generator=generator, device=generator.device).item() for s in (h, w))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mask = box_mask(*(torch.tensor([v], device=x.device) for v in (y0, y1, x0, x1)), h, w)
    mixed = torch.where(mask[:, None], x[perm], x)
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, kept * y + (1 - kept) * y[perm]


def manifold_mixup(y, generator, alpha=2.0, layers=(0, 1, 2)):
    """Verma et al. (2019): mix hidden states at a layer drawn from ``layers`` (0 = the input).

    Returns (layer, mix, soft labels), where ``mix(h)`` blends a batch of hidden states with their
    partners; the mix points of a model are ``models.mix_points``.
    """
    layer = layers[torch.randint(len(layers), (1,), generator=generator, device=generator.device).item()]
    lam = _beta(alpha, generator)
    perm = _partners(len(y), generator, y.device)
    return layer, lambda h: lam * h + (1 - lam) * h[perm], lam * y + (1 - lam) * y[perm]


# name -> (kind, function): "input" mixes act on the batch, "model" mixes inside the forward pass.
MIXES = {
    "mixup": ("input", mixup),
    "cutmix": ("input", cutmix),
    "manifold_mixup": ("model", manifold_mixup),
}
