"""Ops with their own per-image random parameters: op(x, generator, **params) -> x.

x is uint8 (N, C, H, W) on any device; every random draw comes from ``generator`` (which may live on
another device than x), one draw per image.
"""
import torch


def uniform(n, generator, device):
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def flip(x, generator):
    """Horizontal flip of every image (the pipeline's ``p`` makes it random per image)."""
    return x.flip(3)


def pad_crop(x, generator, padding=4):
    """Zero-pad by ``padding`` and crop back to the original size at a per-image random offset."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator,
                            device=generator.device).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


