"""Ops with their own per-image random parameters: op(x, generator, **params) -> x.

x is uint8 (N, C, H, W) on any device; every random draw comes from ``generator`` (which may live on
another device than x), one draw per image.
"""
import math

import torch

from searchlab.errors import UserError


def uniform(n, generator, device):
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def flip(x, generator):
    """Horizontal flip of every image (the pipeline's ``p`` makes it random per image)."""
    return x.flip(3)


def fill_values(fill, channels, op):
    """``fill`` (one value, or one per channel) as a tensor of 1 or ``channels`` values in 0..255."""
    values = torch.as_tensor(fill).flatten()
    if values.numel() not in (1, channels) or values.min() < 0 or values.max() > 255:
        raise UserError(f"{op} fill must be one value or {channels} values (one per channel) in 0..255, "
                        f"got {values.tolist()}")
    return values


def pad_crop(x, generator, padding=4, fill=0):
    """Pad by ``padding`` with ``fill`` and crop back to the original size at a per-image random offset.

    ``fill`` is one value for every channel or one per channel (e.g. the dataset's mean colour).
    """
    n, c, h, w = x.shape
    fill = fill_values(fill, c, "pad_crop")
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = torch.empty((n, c, hp, wp), dtype=torch.uint8, device=x.device)
    padded[:] = fill.to(x.device, torch.uint8).view(1, -1, 1, 1)
    padded[:, :, padding:padding + h, padding:padding + w] = x
    padded = padded.flatten()
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator,
                            device=generator.device).to(x.device)
    # Each output row is w consecutive values of the padded batch: pick them out of a view that
    # holds every run of w consecutive values (one gather of whole rows, much cheaper than a
    # gather of single pixels). Row r of channel ch of image i starts at
    # ((i * c + ch) * (h + 2p) + top_i + r) * (w + 2p) + left_i.
    top, left = offsets.view(2, n, 1, 1)
    planes = torch.arange(n * c, device=x.device).view(n, c, 1) * hp
    starts = (planes + top + torch.arange(h, device=x.device)) * wp + left  # (N, C, H)
    runs = padded.as_strided((padded.numel() - w + 1, w), (1, 1))
    return runs.index_select(0, starts.flatten()).view(n, c, h, w)


# ---------------------------------------------------------------------------------------------------
# Cutout (DeVries & Taylor 2017)
# ---------------------------------------------------------------------------------------------------

def random_boxes(n, h, w, size, generator, device):
    """One ``size`` x ``size`` square per image at a uniformly random centre pixel, clipped at the border.

    The centre may lie anywhere in the image, so near the border the square is partly outside it and
    the box is smaller: this is the reference cutout (and the box cutmix cuts). Returns int64 tensors
    (y0, y1, x0, x1) of shape (N,) on ``device``, half-open: rows y0..y1-1, columns x0..x1-1.
    """
    cy = torch.randint(0, h, (n,), generator=generator, device=generator.device).to(device)
    cx = torch.randint(0, w, (n,), generator=generator, device=generator.device).to(device)
    # The reference implementation spans centre - size//2 .. centre + size//2; starting at
    # centre - size//2 and spanning `size` pixels is the same for even sizes and keeps odd sizes exact.
    y0, x0 = cy - size // 2, cx - size // 2
    return y0.clamp(0, h), (y0 + size).clamp(0, h), x0.clamp(0, w), (x0 + size).clamp(0, w)


def _box_mask(y0, y1, x0, x1, h, w):
    """uint8 (N, H, W), 1 inside each image's half-open box [y0, y1) x [x0, x1): the product of a row
    and a column indicator, which is several times cheaper on uint8 than a boolean ``&``."""
    rows = torch.arange(h, device=y0.device)
    cols = torch.arange(w, device=x0.device)
    in_rows = ((rows >= y0[:, None]) & (rows < y1[:, None])).to(torch.uint8)  # (N, H)
    in_cols = ((cols >= x0[:, None]) & (cols < x1[:, None])).to(torch.uint8)  # (N, W)
    return in_rows[:, :, None] * in_cols[:, None, :]


def box_mask(y0, y1, x0, x1, h, w):
    """Boolean (N, H, W) mask, True inside each image's half-open box [y0, y1) x [x0, x1)."""
    return _box_mask(y0, y1, x0, x1, h, w).bool()


def cutout(x, generator, size=16, fill=0):
    """Fill one ``size`` x ``size`` square per image (random centre, clipped at the border) with ``fill``.

    ``fill`` is one value for every channel or one per channel (e.g. the dataset's mean colour).
    """
    n, c, h, w = x.shape
    fill = fill_values(fill, c, "cutout")
    inside = _box_mask(*random_boxes(n, h, w, size, generator, x.device), h, w)[:, None]  # (N, 1, H, W)
    # Arithmetic instead of torch.where, which is several times slower on uint8: one of the two
    # terms is always 0, so nothing overflows.
    out = x * (1 - inside)
    if fill.any():
        out += fill.to(x.device, torch.uint8).reshape(1, -1, 1, 1) * inside
    return out


# ---------------------------------------------------------------------------------------------------
# RandomResizedCrop
# ---------------------------------------------------------------------------------------------------

ATTEMPTS = 10  # as torchvision: after 10 invalid candidate boxes, fall back to a centre crop


def _rrc_boxes(n, height, width, scale, ratio, generator, device):
    """torchvision's RandomResizedCrop box sampling, one box per image: (top, left, h, w), int64 (N,).

    All ``ATTEMPTS`` candidates are drawn at once and each image keeps its first valid one, which is
    the box torchvision's loop would return for the same draws.
    """
    area_frac, log_ratio = torch.rand(2, n, ATTEMPTS, generator=generator, device=generator.device).to(device)
    offset = torch.rand(2, n, generator=generator, device=generator.device).to(device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area_frac)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * log_ratio)
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.int().argmax(1, keepdim=True)  # argmax returns the first maximum: the first valid box
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    # Offsets uniform over the valid positions; min() guards against u * k rounding up to k in float32.
    top = (offset[0] * (height - h + 1)).long().minimum(height - h)
    left = (offset[1] * (width - w + 1)).long().minimum(width - w)

    # Centre-crop fallback, the same for every image of this shape.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    ok = valid.any(1)
    return (torch.where(ok, top, (height - fh) // 2), torch.where(ok, left, (width - fw) // 2),
            torch.where(ok, h, fh), torch.where(ok, w, fw))


def _bilinear_taps(start, length, out_size):
    """Source indices and weights to resize [start, start + length) to ``out_size`` pixels, per image.

    Half-pixel centres (align_corners=False) with the taps clamped to the crop, as a crop followed by
    ``interpolate`` does: sampling the full image instead would blend in pixels outside the crop.
    """
    centres = torch.arange(out_size, device=start.device) + 0.5
    pos = (centres * (length[:, None] / out_size) - 0.5).clamp(min=0)
    i0 = pos.floor().long().minimum(length[:, None] - 1)
    i1 = (i0 + 1).minimum(length[:, None] - 1)
    return start[:, None] + i0, start[:, None] + i1, pos - i0


def _lerp_along(img, dim, taps):
    """Linear interpolation of float (N, C, H, W) ``img`` along ``dim`` (2 or 3) with per-image taps."""
    i0, i1, frac = taps
    view = [len(img), 1, 1, 1]
    view[dim] = -1
    shape = list(img.shape)
    shape[dim] = i0.shape[1]
    a = img.gather(dim, i0.view(view).expand(shape))
    b = img.gather(dim, i1.view(view).expand(shape))
    return a + (b - a) * frac.view(view)


def random_resized_crop(x, generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop with a box per image, resized back to the input size (bilinear).

    Matches torchvision's ``resized_crop(..., antialias=False)`` on float tensors, rounded to uint8
    (its native uint8 CPU kernel rounds between passes and differs by at most 1). ``roi_align`` would
    batch the boxes too, but it samples the pixels just outside each crop near its edges.
    """
    if not (0 <= scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
        raise UserError(f"random_resized_crop needs 0 <= scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], "
                        f"got scale={tuple(scale)}, ratio={tuple(ratio)}")
    n, _, height, width = x.shape
    top, left, h, w = _rrc_boxes(n, height, width, scale, ratio, generator, x.device)
    out = _lerp_along(x.float(), 2, _bilinear_taps(top, h, height))
    out = _lerp_along(out, 3, _bilinear_taps(left, w, width))
    return out.round_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------
# ColorJitter (brightness, hue)
# ---------------------------------------------------------------------------------------------------

def _jitter_factors(n, brightness, hue, generator, device):
    """Per-image brightness factors, uniform in [max(0, 1 - b), 1 + b], and hue shifts in [-h, h]."""
    u = torch.rand(2, n, generator=generator, device=generator.device).to(device)
    low = max(0.0, 1.0 - brightness)
    return low + (1.0 + brightness - low) * u[0], hue * (2 * u[1] - 1)


def _adjust_brightness(x, factors):
    # Truncating back to uint8, as torchvision's uint8 path does, keeps the two bit-identical.
    return (x.float() * factors[:, None, None, None]).clamp_(0, 255).to(torch.uint8)


# Per hue sector (floor(6 h)), where red, green and blue come from in the stack (v, p, q, t).
_SECTOR_RGB = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _adjust_hue(x, shifts):
    """RGB -> HSV -> hue + shift (mod 1) -> RGB, one shift per image.

    The arithmetic follows torchvision's tensor ``adjust_hue`` step by step (PIL's formulas), so the
    result is bit-identical to it, not just close.
    """
    if x.shape[1] == 1:  # a grey image has no hue; torchvision returns it unchanged
        return x
    img = x.float().mul_(1.0 / 255)
    r, g, b = img.unbind(1)
    maxc, minc = img.amax(1), img.amin(1)
    grey = maxc == minc  # hue and saturation are 0; the divisors below are set to 1 to avoid 0/0
    span = maxc - minc
    s = span / torch.where(grey, torch.ones_like(maxc), maxc)
    divisor = torch.where(grey, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = (h * (1.0 / 6.0) + 1.0).fmod(1.0)
    h = (h + shifts[:, None, None]).remainder(1.0)

    h6 = h * 6
    sector = h6.floor()
    f = h6 - sector
    v = maxc
    p = ((1.0 - s) * v).clamp(0, 1)
    q = ((1.0 - s * f) * v).clamp(0, 1)
    t = ((s * f + (1.0 - s)) * v).clamp(0, 1)
    index = _SECTOR_RGB.to(x.device)[sector.long().remainder(6)].permute(0, 3, 1, 2)  # (N, 3, H, W)
    rgb = torch.stack((v, p, q, t), 1).gather(1, index)
    # torchvision's float -> uint8 conversion: scale by 256 - 1e-3 and truncate.
    return rgb.mul_(255 + 1.0 - 1e-3).to(torch.uint8)


def color_jitter(x, generator, brightness=0.0, hue=0.0):
    """torchvision's ColorJitter for brightness and hue, with factors drawn per image.

    torchvision applies its adjustments in a random order; here brightness always comes first, then
    hue. An amount of 0 leaves that adjustment out (the factors are drawn all the same, so the random
    stream does not depend on the amounts).
    """
    if brightness < 0 or not 0 <= hue <= 0.5:
        raise UserError(f"color_jitter needs brightness >= 0 and hue in [0, 0.5], "
                        f"got brightness={brightness}, hue={hue}")
    factors, shifts = _jitter_factors(len(x), brightness, hue, generator, x.device)
    if brightness > 0:
        x = _adjust_brightness(x, factors)
    if hue > 0:
        x = _adjust_hue(x, shifts)
    return x


# ---------------------------------------------------------------------------------------------------
# Gaussian noise
# ---------------------------------------------------------------------------------------------------

def gaussian_noise(x, generator, sigma=0.2):
    """Add N(0, sigma^2) noise per pixel, in [0, 1] pixel units, clamp to [0, 1] and round to uint8."""
    if sigma < 0:
        raise UserError(f"gaussian_noise needs sigma >= 0, got {sigma}")
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    out = (x.float() / 255 + sigma * noise).clamp_(0, 1)
    return out.mul_(255).round_().to(torch.uint8)


# name -> op(x, generator, **params)
STOCHASTIC = {
    "flip": flip,
    "pad_crop": pad_crop,
    "cutout": cutout,
    "random_resized_crop": random_resized_crop,
    "color_jitter": color_jitter,
    "gaussian_noise": gaussian_noise,
}
