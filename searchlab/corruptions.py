"""CIFAR-10-C corruptions (Hendrycks & Dietterich 2019), batched on tensors, and the dataset they build.

A port of ``ImageNet-C/create_c/make_cifar_c.py`` (github.com/hendrycks/robustness) with its CIFAR
parameter tables, not ImageNet-C's: the ``imagecorruptions`` package uses ImageNet-C's tables, which
are far harsher on 32x32 images. ``CORRUPTIONS[name](x, severity, generator)`` takes uint8
(N, 3, 32, 32) on any device and returns uint8 of the same shape; every random draw comes from
``generator``, per image, so a seeded call replays exactly.

Where the original calls a library, this reproduces that library's arithmetic:
skimage.filters.gaussian (scipy's gaussian_filter: weights, truncation and boundary mode), cv2's
filter2D / GaussianBlur / warpAffine (fixed-point 1/32-pixel coordinates) / cvtColor,
scipy.ndimage.zoom and map_coordinates (order 1), skimage's rgb2hsv / hsv2rgb, PIL's BOX resize
(22-bit fixed point, horizontal pass then vertical) and ImageMagick's MotionBlurImage (through
Wand); JPEG goes through torchvision.io, which gives PIL's pixels. The original's glass-blur
"swap" is, on numpy views, a copy of the neighbour; that is what it computes and what this does. The original's outputs are float arrays cast with ``np.uint8`` after clipping, i.e.
truncated, and so are ours. tests/test_corruptions.py compares every corruption with an
independent per-image numpy/PIL/scipy port (tests/cifar_c_reference.py).

Known differences from the official CIFAR-10-C files:
- frost: the original blends crops of six frost photographs (frost1.png ... frost6.jpg in the
  robustness repository). No dependency of searchlab ships them and nothing here downloads at run
  time, so the five textures it samples from are synthesised (seeded, identical on every machine)
  with the sizes and per-channel mean and spread of the photographs after the original's 0.2x
  resize. Frost images therefore follow the original's recipe and strength but not its pixels.
- impulse_noise follows today's skimage ``random_noise(mode='s&p')``: each value (per channel) is
  hit with probability ``amount``, half salt, half pepper. skimage releases before 0.14 drew
  exactly ceil(amount * size / 2) coordinates per kind instead (same expected count).
- The random streams are torch's, not numpy's legacy global RNG, so no image matches the official
  file pixel for pixel where a corruption is random; the distributions are the same.

``build`` writes ``$SEARCHLAB_DATA/<name>-c/<corruption>.npy`` (5N, H, W, C) uint8, severities 1..5
stacked, and ``labels.npy``: the official layout, so an official CIFAR-10-C folder works with
``load`` as is. This module knows nothing of Ray.
"""
import functools
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from searchlab.data import data_root, require
from searchlab.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (3, 32, 32)  # every table below is for 32x32 RGB images

# ------------------------------------------------------------------------------------------------
# Parameter tables: make_cifar_c.py's ``c = [...]`` lists, severity 1..5
# ------------------------------------------------------------------------------------------------
GAUSSIAN_NOISE = [0.04, 0.06, .08, .09, .10]  # sigma on [0, 1] pixels
SHOT_NOISE = [500, 250, 100, 75, 50]  # photons per unit intensity
IMPULSE_NOISE = [.01, .02, .03, .05, .07]  # salt-and-pepper amount
DEFOCUS_BLUR = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]  # disk radius, alias blur
GLASS_BLUR = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]  # sigma, max delta, passes
MOTION_BLUR = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]  # ImageMagick radius, sigma
# np.arange with the original's float steps: arange(1, 1.06, 0.01) has 7 factors (1.0 ... 1.06),
# one more than its stop suggests, so the table is the arange itself, not a retyped list.
ZOOM_BLUR = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
             np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)]
# snow: layer mean, layer std, zoom, threshold, blur radius, blur sigma, image weight
SNOW = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)]
FROST = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]  # image weight, frost weight
FOG = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]  # fog strength, plasma wibble decay
BRIGHTNESS = [.05, .1, .15, .2, .3]  # added to HSV value
CONTRAST = [.75, .5, .4, .3, 0.15]  # factor around the per-channel mean
IMSIZE = 32
# elastic: displacement scale (alpha), displacement smoothing sigma, affine jitter (pixels)
ELASTIC_TRANSFORM = [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
                     (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
                     (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
                     (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
                     (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)]
PIXELATE = [0.95, 0.9, 0.85, 0.75, 0.65]  # downscale factor
JPEG_COMPRESSION = [80, 65, 58, 50, 40]  # PIL quality

# Glass blur's vectorised pixel "swap" below relies on max_delta == 1 (see _glass_blur_apply).
assert all(delta == 1 for _, delta, _ in GLASS_BLUR)


def _check(x, severity):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 \
            or tuple(x.shape[1:]) != IMAGE_SHAPE:
        what = (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__)
        raise UserError(f"corruptions take uint8 tensors (N, 3, 32, 32), got {what}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or severity not in SEVERITIES:
        raise UserError(f"severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    return int(severity) - 1


def _to_uint8(v):
    """Values already clipped to [0, 255] -> uint8 by truncation, as the original's np.uint8."""
    return v.to(torch.uint8)


def _unit(x):
    """uint8 -> float64 in [0, 1]: the original's ``np.array(x) / 255.``"""
    return x.double() / 255


# ------------------------------------------------------------------------------------------------
# Library arithmetic the original relies on
# ------------------------------------------------------------------------------------------------

def _extend(i, n, mode):
    """Index i of a length-n signal under scipy.ndimage's boundary modes."""
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "reflect":  # scipy 'reflect': d c b a | a b c d | d c b a
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i
    if mode == "mirror":  # scipy 'mirror' = cv2 BORDER_REFLECT_101: d c b | a b c d | c b a
        i %= 2 * n - 2
        return i if i < n else 2 * n - 2 - i
    raise ValueError(mode)


@functools.cache
def _gaussian_weights(sigma, truncate):
    """scipy's gaussian_filter1d weights: exp(-x^2 / (2 sigma^2)) / sum, |x| <= int(truncate sigma + 0.5)."""
    radius = int(truncate * float(sigma) + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * taps ** 2)
    return tuple(weights / weights.sum())


def _filter_axis(x, weights, dim, mode):
    """scipy.ndimage.correlate1d with a symmetric kernel along ``dim``, in scipy's order of
    summation (ni_filters.c: centre tap first, then (left + right) * w pairs, outermost first),
    so that results agree to the last bit."""
    radius = len(weights) // 2
    n = x.shape[dim]
    if radius < n - 1:  # pad by slices: far faster than index_select along an inner axis
        if mode == "nearest":
            left = x.narrow(dim, 0, 1).expand(*[radius if d == dim % x.ndim else -1 for d in range(x.ndim)])
            right = x.narrow(dim, n - 1, 1).expand_as(left)
        else:
            skip = 1 if mode == "mirror" else 0
            left = x.narrow(dim, skip, radius).flip(dim)
            right = x.narrow(dim, n - radius - skip, radius).flip(dim)
        padded = torch.cat([left, x, right], dim)
    else:
        index = torch.tensor([_extend(i, n, mode) for i in range(-radius, n + radius)], device=x.device)
        padded = x.index_select(dim, index)
    total = padded.narrow(dim, radius, n) * weights[radius]
    for j in range(radius, 0, -1):
        total = total + (padded.narrow(dim, radius - j, n) + padded.narrow(dim, radius + j, n)) * weights[radius - j]
    return total


def _gaussian(x, sigma, truncate=4.0, mode="nearest"):
    """skimage.filters.gaussian on each channel of float64 (..., H, W): rows (axis 0) first, then
    columns, the channel axis untouched (the original's multichannel=True). Defaults are skimage's:
    mode 'nearest', truncate 4. scipy skips an axis whose sigma is ~0, so skimage's gaussian with
    sigma 0 returns its input."""
    if sigma <= 1e-15:
        return x
    weights = _gaussian_weights(sigma, truncate)
    return _filter_axis(_filter_axis(x, weights, -2, mode), weights, -1, mode)


@functools.cache
def _zoom_matrix(h, zoom):
    """(h, h) float64 matrix Z with Z @ signal = make_cifar_c.py's clipped_zoom along one axis:
    crop the centre ceil(h / zoom), scipy.ndimage.zoom it by ``zoom`` (order 1, output size
    round(side * zoom), grid_mode=False: output o samples input o (side - 1) / (size - 1), i.e.
    corners map to corners) and trim back to h."""
    side = int(np.ceil(h / zoom))
    top = (h - side) // 2
    size = round(side * zoom)  # Python round, as scipy.ndimage.zoom
    trim = (size - h) // 2
    matrix = np.zeros((h, h))
    for o in range(h):
        position = (o + trim) * ((side - 1) / (size - 1)) if size > 1 else 0.0
        low = min(int(np.floor(position)), side - 1)
        t = position - low
        matrix[o, top + low] += 1 - t
        if t and low + 1 < side:  # beyond the crop: scipy's mode='constant' reads 0
            matrix[o, top + low + 1] += t
    return matrix


def _clipped_zoom(x, zoom):
    """clipped_zoom of float64 (..., H, W) images (the same zoom on both axes)."""
    z = torch.from_numpy(_zoom_matrix(x.shape[-1], float(zoom))).to(x.device)
    return z @ x @ z.T


def _motion_blur_u8(x, radius, sigma, angle):
    """ImageMagick's MotionBlurImage (effect.c) on uint8 (N, C, H, W), one angle (degrees) per image.

    ImageMagick convolves with a one-sided line kernel: width = 2 ceil(radius) + 1 taps with
    weights exp(-i^2 / (2 sigma^2)), normalised, tap i reading the pixel at offset
    (ceil(i cos(a) - 0.5), ceil(i sin(a) - 0.5)) (x right, y down), edge pixels replicated (the
    default virtual-pixel method). It sums in 16-bit quantum units and rounds to 8 bits when the
    original writes the PNG; rounding the sum of 8-bit values to nearest is the same up to ties.
    """
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    taps = torch.arange(width, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-(taps * taps) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    kernel = (kernel / kernel.sum()).tolist()
    a = torch.deg2rad(angle.to(x.device, torch.float64))[:, None]
    point_x, point_y = width * torch.sin(a), width * torch.cos(a)
    norm = torch.hypot(point_x, point_y)
    off_x = torch.ceil(taps * point_y / norm - 0.5).long()  # (N, width)
    off_y = torch.ceil(taps * point_x / norm - 0.5).long()
    # One gather per tap for all images (edge pixels replicated by clamping), summed tap by tap
    # in ImageMagick's order: a few large operations, whatever the number of distinct angles.
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    flat = x.reshape(n, c, h * w)
    total = torch.zeros((n, c, h * w), dtype=torch.float64, device=x.device)
    for i in range(width):
        r = (rows + off_y[:, i, None, None]).clamp(0, h - 1)
        q = (cols + off_x[:, i, None, None]).clamp(0, w - 1)
        index = (r * w + q).reshape(n, 1, h * w).expand(n, c, h * w)
        total += kernel[i] * flat.gather(2, index).double()
    total = total.reshape(n, c, h, w)
    return torch.floor(total + 0.5).clamp(0, 255).to(torch.uint8)


@functools.cache
def _pil_box_matrix(size_in, size_out):
    """Pillow's resample coefficients for BOX (Resample.c precompute_coeffs and
    normalize_coeffs_8bpc) as an (out, in) float64 matrix of 22-bit fixed-point integers.

    BOX weighs 1 every input pixel whose centre lies in (centre - scale/2, centre + scale/2]
    (box_filter: -0.5 < x <= 0.5), normalised, then scaled by 2^22 and rounded half away from 0.
    """
    precision = 22
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = np.zeros((size_out, size_in))
    for xx in range(size_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), size_in)
        weights = [1.0 if -0.5 < (x + 0.5 - center) / filterscale <= 0.5 else 0.0
                   for x in range(xmin, xmax)]
        total = sum(weights)
        for x, wgt in zip(range(xmin, xmax), weights):
            matrix[xx, x] = int(0.5 + (wgt / total if total else 0.0) * (1 << precision))
    return matrix


def _pil_box_resize(x, size):
    """PIL ``Image.resize((size, size), Image.BOX)`` of uint8 (N, C, H, W): horizontal pass, then
    vertical, each rounding to uint8 as Resample.c does: (sum + 2^21) >> 22, clipped. float64 holds
    the integer sums exactly (< 2^53)."""
    def one_pass(v, matrix):  # along the last axis
        m = torch.from_numpy(matrix).to(v.device)
        acc = v.double() @ m.T + (1 << 21)
        return torch.floor(acc * 2.0 ** -22).clamp(0, 255)  # >> 22; scaling by 2^-22 is exact

    horizontal = one_pass(x, _pil_box_matrix(x.shape[-1], size))
    vertical = one_pass(horizontal.transpose(-1, -2), _pil_box_matrix(x.shape[-2], size))
    return vertical.transpose(-1, -2).to(torch.uint8)


# ------------------------------------------------------------------------------------------------
# Noise
# ------------------------------------------------------------------------------------------------

def _gaussian_noise_draw(n, severity, generator):
    # float32 draws (5x cheaper than float64 here); the arithmetic below is float64 as the original's
    return {"normal": torch.randn((n, *IMAGE_SHAPE), generator=generator, device=generator.device)}


def _gaussian_noise_apply(x, severity, draws):
    c = GAUSSIAN_NOISE[severity - 1]
    z = draws["normal"].to(x.device, torch.float64)
    return _to_uint8((_unit(x) + c * z).clamp(0, 1) * 255)


def shot_noise(x, severity, generator):
    c = SHOT_NOISE[_check(x, severity)]
    rate = (_unit(x) * c).to(generator.device)
    counts = torch.poisson(rate, generator=generator).to(x.device)
    return _to_uint8((counts / c).clamp(0, 1) * 255)


def _impulse_noise_draw(n, severity, generator):
    u = torch.rand((2, n, *IMAGE_SHAPE), generator=generator, device=generator.device)
    return {"hit": u[0], "salt": u[1]}


def _impulse_noise_apply(x, severity, draws):
    # skimage.util.random_noise(mode='s&p', amount=c): each value is hit with probability c, and
    # a hit is salt (1) or pepper (0) with probability 1/2 each.
    c = IMPULSE_NOISE[severity - 1]
    hit = draws["hit"].to(x.device) < c
    salt = draws["salt"].to(x.device) < 0.5
    v = _unit(x)
    v = torch.where(hit & salt, 1.0, torch.where(hit & ~salt, 0.0, v))
    return _to_uint8(v.clamp(0, 1) * 255)


# ------------------------------------------------------------------------------------------------
# Blur
# ------------------------------------------------------------------------------------------------

@functools.cache
def defocus_kernel(radius, alias_blur):
    """make_cifar_c.py's disk(): an aliased disk on a 17x17 grid (radius <= 8), normalised, then
    cv2.GaussianBlur with a 3x3 kernel, all in float32 as the original. cv2's getGaussianKernel
    (sigma > 0) computes exp(-x^2 / (2 sigma^2)) in double, normalises, stores float32; the blur
    runs rows then columns with float32 sums and BORDER_REFLECT_101 (all zeros here).
    Returns the nonzero part (the rest is exactly 0 and does not change the filter2D sums)."""
    grid = np.arange(-8, 8 + 1)
    gx, gy = np.meshgrid(grid, grid)
    disk = np.array((gx ** 2 + gy ** 2) <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    taps = np.arange(3) - 1.0
    g = np.exp(-0.5 / (alias_blur * alias_blur) * (taps * taps))
    g = (g * (1.0 / g.sum())).astype(np.float32)  # getGaussianKernel multiplies by 1 / sum
    padded = np.pad(disk, 1, mode="reflect")  # numpy 'reflect' = BORDER_REFLECT_101
    rows = padded[:, 0:-2] * g[0] + padded[:, 1:-1] * g[1] + padded[:, 2:] * g[2]
    kernel = rows[0:-2] * g[0] + rows[1:-1] * g[1] + rows[2:] * g[2]
    used = np.nonzero(kernel.any(axis=0))[0]
    lo, hi = used.min(), used.max() + 1
    assert (lo, hi) == (17 - hi, 17 - lo)  # symmetric, so the centre stays the centre
    return kernel[lo:hi, lo:hi]


def defocus_blur(x, severity, generator=None):
    radius, alias_blur = DEFOCUS_BLUR[_check(x, severity)]
    kernel = defocus_kernel(radius, alias_blur).astype(np.float64)
    k = kernel.shape[-1]
    # cv2.filter2D per channel: a correlation with BORDER_REFLECT_101 (torch's 'reflect'), here
    # as a sum of shifted copies over the nonzero taps (at most 5x5). cv2 switches to a DFT for a
    # 17x17 kernel; that changes the sums by ~1e-16 only.
    v = F.pad(_unit(x), (k // 2,) * 4, mode="reflect")
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * v[..., i:i + 32, j:j + 32]
    return _to_uint8(out.clamp(0, 1) * 255)


def _glass_blur_draw(n, severity, generator):
    _, delta, passes = GLASS_BLUR[severity - 1]
    # One (dx, dy) per pixel position h, w = 31 ... 2 and pass, np.random.randint(-1, 1): {-1, 0}.
    size = IMAGE_SHAPE[1] - 2 * delta
    return {"shift": torch.randint(-delta, delta, (n, passes, size, size, 2), generator=generator,
                                   device=generator.device)}


def _glass_blur_apply(x, severity, draws):
    sigma, delta, passes = GLASS_BLUR[severity - 1]
    h = x.shape[-1]
    v = _to_uint8(_gaussian(_unit(x), sigma) * 255)
    # The original's loop (h and w from 31 down to 2):
    #     x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    # On numpy rows this is not a swap: the right side holds views, so x[h, w] receives
    # x[h', w'] and x[h', w'] then receives its own value back. Each visited pixel copies its
    # neighbour at (h + dy, w + dx), dx, dy in {-1, 0}; that neighbour comes later in the
    # descending visit order, so it still holds its value from before the pass. A pass is
    # therefore exactly one gather from the previous state, for all images at once.
    shift = draws["shift"].to(x.device)
    n = len(x)
    inner = torch.arange(h - delta, delta, -1, device=x.device)  # 31 ... 2, the visit order
    batch = torch.arange(n, device=x.device)[:, None, None]
    for p in range(passes):
        dx, dy = shift[:, p, ..., 0], shift[:, p, ..., 1]  # (N, 30, 30), indexed by visit order
        src_h = inner[None, :, None] + dy
        src_w = inner[None, None, :] + dx
        pixels = v.permute(0, 2, 3, 1)  # (N, H, W, C)
        moved = pixels[batch, src_h, src_w]  # (N, 30, 30, C)
        pixels = pixels.clone()
        pixels[batch, inner[None, :, None], inner[None, None, :]] = moved
        v = pixels.permute(0, 3, 1, 2)
    return _to_uint8(_gaussian(v.double() / 255, sigma).clamp(0, 1) * 255)


def _motion_blur_draw(n, severity, generator):
    # np.random.uniform(-45, 45): low + (high - low) * U
    return {"angle": -45 + 90 * torch.rand(n, generator=generator, dtype=torch.float64,
                                            device=generator.device)}


def _motion_blur_apply(x, severity, draws):
    radius, sigma = MOTION_BLUR[severity - 1]
    return _motion_blur_u8(x, radius, sigma, draws["angle"])


def zoom_blur(x, severity, generator=None):
    zooms = ZOOM_BLUR[_check(x, severity)]
    # float32 image as the original (astype(np.float32)). scipy's zoom computes each zoomed copy in
    # double and stores it float32; the original then adds the copies one by one in float32. Both
    # roundings matter: at severity 1 many sums land within 1e-6 of an integer, where truncation
    # decides. So every copy is a float64 product (rows: one GEMM for all zooms; columns: one
    # batched GEMM), rounded to float32, and summed in the original's order.
    mats = torch.from_numpy(np.stack([_zoom_matrix(32, float(z)) for z in zooms])).to(x.device)
    k = len(zooms)
    v = _unit(x).float()
    out = torch.empty_like(v)
    for start in range(0, len(x), 128):  # bounded memory: 128 images, all zooms, ~80 MB
        part = v[start:start + 128]
        n = len(part)
        planes = part.double().permute(2, 0, 1, 3).reshape(32, n * 3 * 32)  # (H, n C W)
        rows = (mats.reshape(k * 32, 32) @ planes).reshape(k, 32 * n * 3, 32)  # zoom along H
        both = (rows @ mats.transpose(1, 2)).float().reshape(k, 32, n, 3, 32)  # then along W
        acc = torch.zeros((32, n, 3, 32), device=x.device)
        for i in range(k):
            acc += both[i]
        out[start:start + n] = acc.permute(1, 2, 0, 3)
    v = (v + out) / (k + 1)
    return _to_uint8(v.clamp(0, 1) * 255)


# ------------------------------------------------------------------------------------------------
# Weather
# ------------------------------------------------------------------------------------------------

def _snow_draw(n, severity, generator):
    mean, std = SNOW[severity - 1][:2]
    g, dev = generator, generator.device
    normal = torch.randn((n, 32, 32), generator=g, dtype=torch.float64, device=dev)
    return {"layer": mean + std * normal,  # np.random.normal(loc, scale): loc + scale * N(0, 1)
            "angle": -135 + 90 * torch.rand(n, generator=g, dtype=torch.float64, device=dev)}


def _snow_apply(x, severity, draws):
    _, _, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    layer = _clipped_zoom(draws["layer"].to(x.device)[:, None], zoom)
    layer = torch.where(layer < threshold, 0.0, layer)
    layer = _to_uint8(layer.clamp(0, 1) * 255)  # the greyscale PNG handed to ImageMagick
    layer = _motion_blur_u8(layer, radius, sigma, draws["angle"]).double() / 255
    v = x.float() / 255  # np.array(x, dtype=np.float32) / 255.
    # cv2.cvtColor(RGB2GRAY) on float32: R * 0.299f + G * 0.587f + B * 0.114f
    grey = (v[:, 0:1] * 0.299 + v[:, 1:2] * 0.587) + v[:, 2:3] * 0.114
    v = weight * v + (1 - weight) * torch.maximum(v, grey * 1.5 + 0.5)
    return _to_uint8((v.double() + layer + layer.flip(-1, -2)).clamp(0, 1) * 255)


# Synthetic frost: (height, width), per-channel mean and per-channel std of make_cifar_c.py's
# frost1.png ... frost5.jpg after its cv2.resize(fx=0.2, fy=0.2) (bilinear, no antialiasing),
# measured on the files of the robustness repository (frost2.png and frost3.png hold the same
# picture). frost6.jpg is never used: the original draws np.random.randint(5).
FROST_TEXTURES = [((120, 180), (77.5, 149.0, 165.7), (26.8, 16.4, 15.3)),
                  ((63, 112), (200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
                  ((63, 112), (200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
                  ((70, 105), (138.0, 153.2, 165.6), (29.0, 29.0, 30.2)),
                  ((99, 132), (112.3, 123.3, 134.7), (44.3, 43.2, 41.6))]


@functools.cache
def frost_texture(index):
    """uint8 (H, W, 3) stand-in for the original's frost photograph ``index`` (0..4), made with a
    fixed seed: bright ice needles at random angles over a haze of smoothed noise, scaled to the
    photograph's per-channel mean and spread. Textures 1 and 2 share a seed, like the files."""
    (h, w), mean, std = FROST_TEXTURES[index]
    rng = np.random.default_rng(2019 + (1 if index == 2 else index))
    canvas = Image.new("F", (w * 4, h * 4), 0.0)  # drawn at 4x, then reduced: antialiased lines
    draw = ImageDraw.Draw(canvas)
    for _ in range(h * w // 6):
        x0, y0 = rng.uniform(0, w * 4), rng.uniform(0, h * 4)
        length, angle = rng.uniform(4, 40), rng.uniform(0, np.pi)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=float(rng.uniform(0.3, 1.0)), width=2)
    needles = np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.float64)
    # Imported here, not at the top: every trial worker imports this module, and scipy would add
    # 0.2 s to each worker's start for a texture made once per process.
    from scipy.ndimage import gaussian_filter

    haze = gaussian_filter(rng.normal(size=(h, w)), 2.0, mode="wrap")
    texture = needles / needles.std() + 0.7 * haze / haze.std()
    texture = (texture - texture.mean()) / texture.std()
    rgb = np.asarray(mean) + np.asarray(std) * texture[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _frost_draw(n, severity, generator):
    g, dev = generator, generator.device
    index = torch.randint(0, len(FROST_TEXTURES), (n,), generator=g, device=dev)
    room = torch.tensor([[h - 32, w - 32] for (h, w), _, _ in FROST_TEXTURES], device=dev)[index]
    # np.random.randint(0, room): uniform over 0 .. room - 1
    start = (torch.rand((n, 2), generator=g, dtype=torch.float64, device=dev) * room).long()
    return {"index": index, "start": start}


def _frost_crops(draws, device):
    crops = [frost_texture(int(i))[s0:s0 + 32, s1:s1 + 32]
             for i, (s0, s1) in zip(draws["index"].tolist(), draws["start"].tolist())]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(device)


def _frost_apply(x, severity, draws):
    weight, frost_weight = FROST[severity - 1]
    frost = _frost_crops(draws, x.device)
    return _to_uint8((weight * x.double() + frost_weight * frost.double()).clamp(0, 255))


def _plasma_shapes(mapsize=32):
    """Shapes of the uniform draws of make_cifar_c.py's plasma_fractal, in its order: per step
    size, the squares, then the two diamond sets."""
    shapes, step = [], mapsize
    while step >= 2:
        shapes += [(mapsize // step, mapsize // step)] * 3
        step //= 2
    return shapes


def _fog_draw(n, severity, generator):
    return {"uniform": [torch.rand((n, *s), generator=generator, dtype=torch.float64,
                                   device=generator.device) for s in _plasma_shapes()]}


def _plasma_fractal(uniforms, wibbledecay, mapsize=32):
    """make_cifar_c.py's plasma_fractal (diamond-square), batched: (N, mapsize, mapsize) in [0, 1].
    ``uniforms`` are U[0, 1) draws of _plasma_shapes(); np.random.uniform(-w, w) is -w + 2w U."""
    n = len(uniforms[0])
    m = torch.zeros((n, mapsize, mapsize), dtype=torch.float64, device=uniforms[0].device)
    draws = iter(uniforms)
    step, wibble = mapsize, 100.0

    def wibbledmean(a):
        return a / 4 + wibble * (-wibble + (wibble - -wibble) * next(draws))

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]  # fillsquares
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbledmean(square)
        dr = m[:, half::step, half::step]  # filldiamonds
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbledmean((dr + dr.roll(1, 1)) + (ul + ul.roll(-1, 2)))
        m[:, half::step, 0::step] = wibbledmean((dr + dr.roll(1, 2)) + (ul + ul.roll(-1, 1)))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def _fog_apply(x, severity, draws):
    strength, decay = FOG[severity - 1]
    v = _unit(x)
    max_val = v.amax(dim=(1, 2, 3), keepdim=True)
    plasma = _plasma_fractal([u.to(x.device) for u in draws["uniform"]], decay)[:, None, :32, :32]
    v = v + strength * plasma
    return _to_uint8((v * max_val / (max_val + strength)).clamp(0, 1) * 255)


# ------------------------------------------------------------------------------------------------
# Digital
# ------------------------------------------------------------------------------------------------

def _rgb2hsv(rgb):
    """skimage.color.rgb2hsv on float64 (N, 3, H, W) -> h, s, v planes (N, H, W); later hue cases
    win ties, as skimage's successive masked assignments do."""
    r, g, b = rgb.unbind(1)
    v = rgb.amax(1)
    delta = v - rgb.amin(1)
    flat = delta == 0
    s = torch.where(flat, 0.0, delta / v)
    h = torch.zeros_like(v)
    h = torch.where(r == v, (g - b) / delta, h)
    h = torch.where(g == v, 2.0 + (b - r) / delta, h)
    h = torch.where(b == v, 4.0 + (r - g) / delta, h)
    h = torch.where(flat, 0.0, torch.remainder(h / 6.0, 1.0))
    return h, s, v


def _hsv2rgb(h, s, v):
    """skimage.color.hsv2rgb on float64 (N, H, W) planes; returns the r, g, b planes."""
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = hi.to(torch.uint8) % 6
    # np.choose over the six sectors' (r, g, b): (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    s0, s1, s2, s3, s4, s5 = (sector == k for k in range(6))
    red = torch.where(s0 | s5, v, torch.where(s1, q, torch.where(s4, t, p)))
    green = torch.where(s0, t, torch.where(s1 | s2, v, torch.where(s3, q, p)))
    blue = torch.where(s2, t, torch.where(s3 | s4, v, torch.where(s5, q, p)))
    return red, green, blue


def brightness(x, severity, generator=None):
    c = BRIGHTNESS[_check(x, severity)]
    h, s, v = _rgb2hsv(_unit(x))
    rgb = torch.stack(_hsv2rgb(h, s, (v + c).clamp(0, 1)), 1)
    return _to_uint8(rgb.clamp(0, 1) * 255)


def contrast(x, severity, generator=None):
    c = CONTRAST[_check(x, severity)]
    v = _unit(x)
    # np.mean over axes (0, 1) of an (H, W, C) array adds the H * W values of a channel one after
    # the other (numpy's pairwise summation only runs along a contiguous inner axis), then divides;
    # a sequential cumulative sum reproduces those roundings, which truncation can expose.
    means = (v.flatten(2).cumsum(-1)[..., -1:] / (v.shape[2] * v.shape[3]))[..., None]
    return _to_uint8(((v - means) * c + means).clamp(0, 1) * 255)


def _elastic_transform_draw(n, severity, generator):
    jitter = ELASTIC_TRANSFORM[severity - 1][2]
    g, dev = generator, generator.device
    u = torch.rand((n, 3, 2), generator=g, dtype=torch.float64, device=dev)
    fields = torch.rand((n, 2, 32, 32), generator=g, dtype=torch.float64, device=dev)
    # np.random.uniform(-c, c, size=(3, 2)).astype(np.float32); uniform(-1, 1) displacement fields
    return {"affine": (-jitter + (jitter - -jitter) * u).float(), "dx": -1 + 2 * fields[:, 0],
            "dy": -1 + 2 * fields[:, 1]}


ELASTIC_POINTS = np.float32([[26, 26], [26, 6], [6, 6]])  # centre 16 +- 32 // 3, as the original


def _affine_matrix(points_out):
    """cv2.getAffineTransform(ELASTIC_POINTS, points_out) in float64, batched: (N, 2, 3)."""
    src = torch.from_numpy(ELASTIC_POINTS).double().to(points_out.device)
    a = torch.cat([src, torch.ones(3, 1, dtype=torch.float64, device=src.device)], 1)
    return torch.linalg.solve(a, points_out.double()).transpose(1, 2)


def _cv2_warp_affine(img, matrix):
    """cv2.warpAffine(img, M, (W, H)) on float32 (N, C, H, W): INTER_LINEAR, BORDER_REFLECT_101.

    cv2 inverts M, then finds each source point in fixed point (imgwarp.cpp, WarpAffineInvoker):
    AB_BITS = 10 bits for the products, rounded to INTER_BITS = 5 bits, i.e. 1/32 pixel; the
    bilinear weights are float32 products of multiples of 1/32, summed in float32 in the order
    v00 w00 + v01 w01 + v10 w10 + v11 w11 (remapBilinear)."""
    n, c, h, w = img.shape
    m = matrix.double()
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = torch.where(det != 0, 1.0 / det, 0.0)
    a11, a22 = m[:, 1, 1] * d, m[:, 0, 0] * d
    a12, a21 = -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    scale, round_delta = 1024, 16  # AB_SCALE; AB_SCALE / INTER_TAB_SIZE / 2
    xs = torch.arange(w, dtype=torch.float64, device=img.device)
    ys = torch.arange(h, dtype=torch.float64, device=img.device)
    adelta = torch.round(a11[:, None] * xs * scale).long()  # cvRound: half to even, as torch
    bdelta = torch.round(a21[:, None] * xs * scale).long()
    x0 = torch.round((a12[:, None] * ys + b1[:, None]) * scale).long() + round_delta
    y0 = torch.round((a22[:, None] * ys + b2[:, None]) * scale).long() + round_delta
    fx_full = (x0[:, :, None] + adelta[:, None, :]) >> 5  # (N, H, W), in 1/32 pixel
    fy_full = (y0[:, :, None] + bdelta[:, None, :]) >> 5
    ix, iy = fx_full >> 5, fy_full >> 5
    tx = (fx_full & 31).float() / 32
    ty = (fy_full & 31).float() / 32

    def reflect101(i, size):
        i = i.remainder(2 * size - 2)
        return torch.where(i < size, i, 2 * size - 2 - i)

    flat = img.reshape(n, c, h * w)

    def at(yy, xx):
        index = (reflect101(yy, h) * w + reflect101(xx, w)).reshape(n, 1, h * w).expand(n, c, -1)
        return flat.gather(2, index).reshape(n, c, h, w)

    w00, w01 = ((1 - ty) * (1 - tx))[:, None], ((1 - ty) * tx)[:, None]
    w10, w11 = (ty * (1 - tx))[:, None], (ty * tx)[:, None]
    return (at(iy, ix) * w00 + at(iy, ix + 1) * w01) + at(iy + 1, ix) * w10 + at(iy + 1, ix + 1) * w11


def _map_coordinates_reflect(img, rows, cols):
    """scipy.ndimage.map_coordinates(img, (rows, cols, channel), order=1, mode='reflect') on
    float32 (N, C, H, W) with float64 (N, H, W) coordinates: linear interpolation on the
    half-sample symmetric extension, summed in double as scipy does, stored float32."""
    n, c, h, w = img.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    tr, tc = (rows - r0)[:, None], (cols - c0)[:, None]
    r0, c0 = r0.long(), c0.long()

    def sym(i, size):
        i = i.remainder(2 * size)
        return torch.where(i < size, i, 2 * size - 1 - i)

    flat = img.double().reshape(n, c, h * w)

    def at(rr, cc):
        index = (sym(rr, h) * w + sym(cc, w)).reshape(n, 1, h * w).expand(n, c, -1)
        return flat.gather(2, index).reshape(n, c, h, w)

    total = (at(r0, c0) * (1 - tr) * (1 - tc) + at(r0, c0 + 1) * (1 - tr) * tc
             + at(r0 + 1, c0) * tr * (1 - tc) + at(r0 + 1, c0 + 1) * tr * tc)
    return total.float()


def _elastic_transform_apply(x, severity, draws):
    alpha, sigma, _ = ELASTIC_TRANSFORM[severity - 1]
    dev = x.device
    v = x.float() / 255  # np.array(image, dtype=np.float32) / 255.
    points = torch.from_numpy(ELASTIC_POINTS).to(dev) + draws["affine"].to(dev)
    v = _cv2_warp_affine(v, _affine_matrix(points))
    # gaussian(uniform(-1, 1), sigma, mode='reflect', truncate=3) * alpha, stored float32
    dx = (_gaussian(draws["dx"].to(dev), sigma, 3.0, "reflect") * alpha).float()
    dy = (_gaussian(draws["dy"].to(dev), sigma, 3.0, "reflect") * alpha).float()
    grid = torch.arange(32, dtype=torch.float64, device=dev)
    rows = grid[None, :, None] + dy.double()
    cols = grid[None, None, :] + dx.double()
    v = _map_coordinates_reflect(v, rows, cols)
    return _to_uint8(v.clamp(0, 1) * 255)


def pixelate(x, severity, generator=None):
    c = PIXELATE[_check(x, severity)]
    small = _pil_box_resize(x, int(32 * c))
    return _pil_box_resize(small, 32)


def jpeg_compression(x, severity, generator=None):
    # The original saves a PIL image as JPEG at the quality and decodes it with PIL. torchvision's
    # encode_jpeg / decode_jpeg (libjpeg-turbo, default 4:2:0 subsampling, islow DCT) give the
    # same pixels as PIL on all 10,000 CIFAR-10 test images at all five qualities, 3-4x faster;
    # the test compares with PIL itself.
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = JPEG_COMPRESSION[_check(x, severity)]
    if not len(x):
        return x.clone()
    decoded = decode_jpeg(encode_jpeg(list(x.cpu()), quality=quality))
    return torch.stack(decoded).to(x.device)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------

# Corruptions whose random draws do not depend on the image: (draw, apply), so that a test can hand
# the same draws to an independent implementation. draw(n, severity, generator) -> dict of
# tensors on the generator's device; apply(x, severity, draws) -> uint8.
STAGES = {
    "gaussian_noise": (_gaussian_noise_draw, _gaussian_noise_apply),
    "impulse_noise": (_impulse_noise_draw, _impulse_noise_apply),
    "glass_blur": (_glass_blur_draw, _glass_blur_apply),
    "motion_blur": (_motion_blur_draw, _motion_blur_apply),
    "snow": (_snow_draw, _snow_apply),
    "frost": (_frost_draw, _frost_apply),
    "fog": (_fog_draw, _fog_apply),
    "elastic_transform": (_elastic_transform_draw, _elastic_transform_apply),
}


def _staged(name):
    draw, apply = STAGES[name]

    def corruption(x, severity, generator):
        s = _check(x, severity) + 1
        return apply(x, s, draw(len(x), s, generator))

    corruption.__name__ = corruption.__qualname__ = name
    return corruption


# The 15 corruptions of CIFAR-10-C, in the official order, under the official file names.
CORRUPTIONS = {
    "gaussian_noise": _staged("gaussian_noise"),
    "shot_noise": shot_noise,
    "impulse_noise": _staged("impulse_noise"),
    "defocus_blur": defocus_blur,
    "glass_blur": _staged("glass_blur"),
    "motion_blur": _staged("motion_blur"),
    "zoom_blur": zoom_blur,
    "snow": _staged("snow"),
    "frost": _staged("frost"),
    "fog": _staged("fog"),
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": _staged("elastic_transform"),
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def corrupt(x, name, severity, generator):
    """``CORRUPTIONS[name](x, severity, generator)`` with a one-line error for an unknown name."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](x, severity, generator)


# ------------------------------------------------------------------------------------------------
# The dataset on disk
# ------------------------------------------------------------------------------------------------

def folder(dataset="cifar10", root=None):
    return data_root(root) / f"{dataset}-c"


def severity_slices(n_total, k=None, severities=5):
    """Slices of the severity blocks of a (severities * N, ...) array, severity 1 first: the first
    ``k`` images of each block (all N when k is None). ``x[s]`` for s in the result evaluates on a
    subset of images per severity."""
    if n_total % severities:
        raise UserError(f"{n_total} images do not split into {severities} severity blocks")
    n = n_total // severities
    k = n if k is None else k
    if not 0 < k <= n:
        raise UserError(f"images per severity must be in 1..{n}, got {k}")
    return [slice(i * n, i * n + k) for i in range(severities)]


def _seed(seed, corruption, severity, chunk):
    """A generator seed per (corruption, severity, chunk), so a chunk's images do not depend on
    which chunks were built before it (resume, chunk order)."""
    index = list(CORRUPTIONS).index(corruption)
    return int(np.random.SeedSequence([seed, index, severity, chunk]).generate_state(1, np.uint64)[0]
               % (1 << 63))


def _complete(path, shape):
    try:
        return np.load(path, mmap_mode="r").shape == shape
    except (OSError, ValueError):
        return False


def build(dataset="cifar10", root=None, seed=0, progress=True, severities=SEVERITIES, chunk=1000,
          device="cpu", corruptions=None):
    """Write ``<root>/<dataset>-c/<corruption>.npy`` (len(severities) * N, H, W, C) uint8 for the test
    split of ``dataset`` (severity blocks in the given order, N images each) and ``labels.npy``
    (the test labels tiled, uint8 like the official files). A file already complete is skipped, so
    an interrupted build resumes; each file is written under a temporary name and renamed.
    ``meta.json`` records the seed and severities; resuming with others is an error."""
    severities = tuple(int(s) for s in severities)
    if not severities or any(s not in SEVERITIES for s in severities) or len(set(severities)) < len(severities):
        raise UserError(f"severities must be distinct values of 1, 2, 3, 4, 5, got {list(severities)}")
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    for name in names:
        if name not in CORRUPTIONS:
            raise UserError(f"unknown corruption {name!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    files = require(dataset, root)
    if files is None:
        raise UserError(f"cannot corrupt {dataset!r}: corruptions need 32x32 RGB images (cifar10, cifar100)")
    images = np.load(files["test_x"], mmap_mode="r")
    labels = np.load(files["test_y"])
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
        raise UserError(f"{files['test_x']} must be uint8 (N, 32, 32, 3) to corrupt, got "
                        f"{images.dtype} {images.shape}")
    n = len(images)
    out = folder(dataset, root)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": dataset, "seed": int(seed), "severities": list(severities), "images": n}
    meta_path = out / "meta.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        if found != meta:
            raise UserError(f"{out} was built with {found}, not {meta}; delete it or build with the same "
                            "seed and severities")
    else:
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    label_path = out / "labels.npy"
    if not _complete(label_path, (len(severities) * n,)):
        if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
            raise UserError(f"{files['test_y']}: labels outside 0..255 do not fit the uint8 labels.npy")
        tiled = np.tile(labels.astype(np.uint8), len(severities))
        _atomic_write(label_path, lambda f: np.save(f, tiled))
    shape = (len(severities) * n, 32, 32, 3)
    for name in names:
        path = out / f"{name}.npy"
        if _complete(path, shape):
            if progress:
                print(f"{name}: complete, skipped", file=sys.stderr)
            continue
        tmp = path.with_name(path.name + ".tmp")
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for block, severity in enumerate(severities):
            for start in range(0, n, chunk):
                generator = torch.Generator(device).manual_seed(_seed(seed, name, severity, start // chunk))
                x = torch.from_numpy(np.array(images[start:start + chunk])).permute(0, 3, 1, 2)
                y = CORRUPTIONS[name](x.to(device), severity, generator)
                target[block * n + start:block * n + start + len(x)] = y.permute(0, 2, 3, 1).cpu().numpy()
                if progress:
                    done = block * n + min(start + chunk, n)
                    print(f"\r{name}: severity {severity}, {done}/{shape[0]} images", end="",
                          file=sys.stderr, flush=True)
        target.flush()
        del target
        os.replace(tmp, path)
        if progress:
            print(file=sys.stderr)
    return out


def _atomic_write(path, write):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def load(dataset="cifar10", root=None):
    """The 15 corruptions of ``<root>/<dataset>-c/``: (dict name -> memmap (S*N, H, W, C) uint8,
    labels (S*N,)), S severity blocks (5 unless meta.json of a partial build says otherwise). An
    official CIFAR-10-C folder works as is; its four extra corruptions are not loaded."""
    where = folder(dataset, root)
    command = f"searchlab data corrupt {dataset}"
    if not where.is_dir():
        raise UserError(f"{where} not found: build it with `{command}` or place the official "
                        f"{dataset.upper()}-C files there")
    missing = [f"{name}.npy" for name in [*CORRUPTIONS, "labels"] if not (where / f"{name}.npy").is_file()]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: build it with `{command}`")
    labels = np.load(where / "labels.npy")
    meta = where / "meta.json"
    severities = len(json.loads(meta.read_text())["severities"]) if meta.is_file() else len(SEVERITIES)
    if labels.ndim != 1 or len(labels) % severities:
        raise UserError(f"{where / 'labels.npy'} has shape {labels.shape}, expected ({severities} * N,)")
    arrays = {}
    for name in CORRUPTIONS:
        path = where / f"{name}.npy"
        array = np.load(path, mmap_mode="r")
        expected = (len(labels), 32, 32, 3)
        if array.shape != expected or array.dtype != np.uint8:
            raise UserError(f"{path} has shape {array.shape} {array.dtype}, expected {expected} uint8 "
                            f"(rebuild with `{command}`)")
        arrays[name] = array
    return arrays, labels
