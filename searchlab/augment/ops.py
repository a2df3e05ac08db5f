"""The magnitude ops of AutoAugment-style policies, batched, one magnitude per image, pixel-exact to PIL.

Every op is ``op(x, v) -> uint8 tensor shaped like x``:

- ``x``: uint8 (N, C, H, W) on any device, C = 3 (RGB) or C = 1 (grey);
- ``v``: float tensor (N,) (or a scalar, used for every image): each image's magnitude in the op's
  natural units: shear factor, translation as a fraction of the image size, degrees, solarize
  threshold, posterize bits, enhance factor. Ops without a magnitude ignore ``v``.

The semantics are those of the PIL implementations in AutoAugment-style code (Fast AutoAugment,
Deep AutoAugment's ``augmentation.py``): ``ShearX`` is ``img.transform(size, AFFINE, (1, v, 0, 0, 1,
0))``, ``Rotate`` is ``img.rotate(v)``, ``Contrast`` is ``ImageEnhance.Contrast(img).enhance(v)``,
and so on. The arithmetic follows Pillow's C code (Geometry.c, Convert.c, Filter.c, Blend.c), so the
results equal PIL's pixel for pixel; tests/test_ops_vs_pil.py checks every level of the DeepAA table.

Geometric ops compute in float64 and int64, which CPU and CUDA support (MPS has no float64).
"""
import math

import torch

# Deep AutoAugment's ``augmentation.py`` (AIoT-MLSys-Lab/DeepAA) calls ``img.transform`` and
# ``img.rotate`` without ``fillcolor``, so PIL fills the uncovered area with black; so do Fast
# AutoAugment and torchvision's AutoAugment. timm's RandAugment uses 128 instead: pass ``fill=128``.
FILL = 0

RANGES = {
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3),
    "TranslateX": (-0.45, 0.45), "TranslateY": (-0.45, 0.45),
    "Rotate": (-30, 30),
    "Solarize": (0, 256), "Posterize": (4, 8),
    "Contrast": (0.1, 1.9), "Color": (0.1, 1.9), "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9),
}


def _magnitudes(v, x):
    """Per-image magnitudes as float64 (N,) on x's device; a scalar applies to every image."""
    return torch.as_tensor(v, dtype=torch.float64, device=x.device).expand(x.shape[0])


# ---------------------------------------------------------------------------------------------
# Geometric ops: nearest-neighbour affine warps, one matrix per image
# ---------------------------------------------------------------------------------------------

def _affine(x, matrix, fill=FILL):
    """Warp each image by its own (2, 3) matrix exactly as PIL's ``Image.transform(AFFINE)`` does.

    ``matrix`` (N, 2, 3) float64 is PIL's ``data``: it maps an output pixel centre (x + .5, y + .5)
    to input coordinates, and the input pixel is the one containing that point (floor).
    """
    n, c, h, w = x.shape
    a0, a1, a2, a3, a4, a5 = matrix.reshape(n, 6, 1, 1).unbind(1)  # each (N, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)

    # PIL's general path (affine_fixed, taken while coordinates stay within +-32768): 16.16 fixed
    # point. The coefficients are rounded once, then coordinates are exact integer sums, so doing
    # the same reproduces PIL bit for bit; plain float coordinates would disagree with PIL wherever
    # a pixel centre falls on a pixel border (13% of the values at ShearX 0.2).
    def fix(t):
        return torch.floor(t * 65536.0 + 0.5).long()

    x_in = (fix(a2 + a0 * 0.5 + a1 * 0.5) + ys * fix(a1) + xs * fix(a0)) >> 16
    y_in = (fix(a5 + a3 * 0.5 + a4 * 0.5) + ys * fix(a4) + xs * fix(a3)) >> 16

    # Matrices without shear or rotation (translations) take PIL's scale path instead, which
    # works in doubles without fixed point; the two differ when a pixel centre lands within
    # 2**-17 of a pixel border.
    scale_only = (a1 == 0) & (a3 == 0)
    x_in = torch.where(scale_only, torch.floor(a2 + a0 * 0.5 + xs * a0).long(), x_in)
    y_in = torch.where(scale_only, torch.floor(a5 + a4 * 0.5 + ys * a4).long(), y_in)

    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)  # (N, H, W)
    index = (y_in.clamp(0, h - 1) * w + x_in.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # scalar or (C,)
    return torch.where(inside.unsqueeze(1), out, fill)


def _matrix(v, entries):
    """(N, 2, 3) float64 matrices from PIL's six ``data`` entries, each per image (N,) or a number."""
    return torch.stack([torch.as_tensor(e, dtype=v.dtype, device=v.device).expand_as(v) for e in entries],
                       1).view(-1, 2, 3)


def shear_x(x, v, fill=FILL):
    """PIL ``transform(AFFINE, (1, v, 0, 0, 1, 0))``: input x = output x + v * output y."""
    v = _magnitudes(v, x)
    return _affine(x, _matrix(v, (1, v, 0, 0, 1, 0)), fill)


def shear_y(x, v, fill=FILL):
    """PIL ``transform(AFFINE, (1, 0, 0, v, 1, 0))``."""
    v = _magnitudes(v, x)
    return _affine(x, _matrix(v, (1, 0, 0, v, 1, 0)), fill)


def translate_x(x, v, fill=FILL):
    """PIL ``transform(AFFINE, (1, 0, v * width, 0, 1, 0))``: v is a fraction of the width."""
    v = _magnitudes(v, x)
    return _affine(x, _matrix(v, (1, 0, v * x.shape[3], 0, 1, 0)), fill)


def translate_y(x, v, fill=FILL):
    """PIL ``transform(AFFINE, (1, 0, 0, 0, 1, v * height))``: v is a fraction of the height."""
    v = _magnitudes(v, x)
    return _affine(x, _matrix(v, (1, 0, 0, 0, 1, v * x.shape[2])), fill)


def rotate(x, v, fill=FILL):
    """PIL ``img.rotate(v)``: v degrees counter-clockwise about the image centre, nearest."""
    h, w = x.shape[2:]
    # Image.rotate's matrix, step by step in doubles: entries rounded to 15 decimals as PIL does,
    # so that e.g. cos(90 degrees) is exactly 0.
    v = _magnitudes(v, x)
    angle = -(v.remainder(360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)
    sin = torch.round(torch.sin(angle), decimals=15)
    cx, cy = w / 2, h / 2
    c = cos * -cx + sin * -cy + 0.0 + cx
    f = -sin * -cx + cos * -cy + 0.0 + cy
    return _affine(x, _matrix(v, (cos, sin, c, -sin, cos, f)), fill)


# ---------------------------------------------------------------------------------------------
# Lookup-table ops: pixel value maps, per image and channel
# ---------------------------------------------------------------------------------------------

def identity(x, v=None):
    return x.clone()


def invert(x, v=None):
    """PIL ``ImageOps.invert``."""
    return 255 - x


def solarize(x, v):
    """PIL ``ImageOps.solarize(img, v)``: values >= v are inverted (v = 256 changes nothing)."""
    return torch.where(x < _magnitudes(v, x).view(-1, 1, 1, 1), x, 255 - x)


def posterize(x, v):
    """PIL ``ImageOps.posterize(img, int(v))``: keep the int(v) high bits (PIL accepts 1..8;
    other values are clamped to that range)."""
    bits = _magnitudes(v, x).trunc().long().clamp(1, 8)
    mask = (255 << (8 - bits)) & 255
    return x & mask.to(torch.uint8).view(-1, 1, 1, 1)


def _histograms(x):
    """Flattened pixels (N*C, H*W) int64 and their per-image, per-channel histograms (N*C, 256)."""
    pixels = x.reshape(x.shape[0] * x.shape[1], -1).long()
    hist = torch.zeros(pixels.shape[0], 256, dtype=torch.long, device=x.device)
    return pixels, hist.scatter_add_(1, pixels, torch.ones_like(pixels))


def _apply_lut(x, pixels, lut):
    return lut.clamp(0, 255).gather(1, pixels).to(torch.uint8).view(x.shape)


def auto_contrast(x, v=None):
    """PIL ``ImageOps.autocontrast``: stretch each channel's [lowest, highest] value to [0, 255]."""
    pixels, hist = _histograms(x)
    bins = torch.arange(256, device=x.device)
    lo = torch.where(hist > 0, bins, 256).amin(1, keepdim=True)
    hi = torch.where(hist > 0, bins, -1).amax(1, keepdim=True)
    # PIL: scale = 255.0 / (hi - lo); offset = -lo * scale; lut = int(i * scale + offset), in doubles.
    # (A true division: torch computes ``number / tensor`` as a reciprocal times the number,
    # which is off by an ulp often enough to move a pixel.)
    scale = torch.full_like(lo, 255, dtype=torch.float64) / (hi - lo).clamp(min=1)
    offset = -lo.double() * scale
    lut = (bins.double() * scale + offset).trunc().long()
    return _apply_lut(x, pixels, torch.where(hi > lo, lut, bins))


def equalize(x, v=None):
    """PIL ``ImageOps.equalize``: per channel, map values through the cumulative histogram."""
    pixels, hist = _histograms(x)
    bins = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, bins, -1).amax(1, keepdim=True)
    # PIL: step = (number of pixels - count in the highest non-empty bin) // 255;
    # lut[i] = (step // 2 + pixels below value i) // step; step 0 leaves the channel unchanged.
    step = (pixels.shape[1] - hist.gather(1, last)) // 255
    below = hist.cumsum(1) - hist
    lut = (step // 2 + below) // step.clamp(min=1)
    return _apply_lut(x, pixels, torch.where(step > 0, lut, bins))


# ---------------------------------------------------------------------------------------------
# Enhance ops: PIL's ImageEnhance, a blend of the image with a degenerate version of it
# ---------------------------------------------------------------------------------------------

def _blend(degenerate, x, v):
    """PIL ``Image.blend(degenerate, x, v)`` as Blend.c computes it: in float32 (alpha is passed
    to C as a float), then clipped to [0, 255] and truncated."""
    alpha = _magnitudes(v, x).float().view(-1, 1, 1, 1)
    d = degenerate.float()
    return (d + alpha * (x.float() - d)).clamp(0, 255).to(torch.uint8)


def _grey(x):
    """PIL ``convert("L")`` (Convert.c): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, (N, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def contrast(x, v):
    """PIL ``ImageEnhance.Contrast``: blend with a flat image of the grey image's rounded mean."""
    grey = _grey(x).flatten(1)
    total, count = grey.sum(1, dtype=torch.int64), grey.shape[1]
    # PIL: int(mean + 0.5). In integers, floor(total / count + 1/2), equal to PIL's doubles because
    # a mean that is not exactly k + 1/2 is at least 1/(2 count) away from it.
    mean = (2 * total + count) // (2 * count)
    return _blend(mean.view(-1, 1, 1, 1), x, v)


def color(x, v):
    """PIL ``ImageEnhance.Color``: blend with the grey version (grey images stay unchanged)."""
    return _blend(_grey(x), x, v)


def brightness(x, v):
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros((), device=x.device), x, v)


# ImageFilter.SMOOTH's weights divided by its scale 13 in float32, as _imaging.c does.
_SMOOTH_EDGE, _SMOOTH_CENTRE = (torch.tensor([1.0, 5.0], dtype=torch.float32) / 13.0).tolist()


def _smooth(x):
    """PIL ``img.filter(ImageFilter.SMOOTH)`` (Filter.c): 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on
    the interior in float32 with PIL's order of additions, +0.5 and truncation; border unchanged."""
    h, w = x.shape[2:]
    if h < 3 or w < 3:
        return x  # PIL returns the image unfiltered when it is smaller than the kernel
    f = x.float()
    edge = torch.tensor(_SMOOTH_EDGE, dtype=torch.float32, device=x.device)
    centre = torch.tensor(_SMOOTH_CENTRE, dtype=torch.float32, device=x.device)

    def row(r, middle):
        return (r[..., :-2] * edge + r[..., 1:-1] * middle) + r[..., 2:] * edge

    total = 0.5 + row(f[:, :, 2:], edge)   # row below first, as Filter.c does
    total = total + row(f[:, :, 1:-1], centre)
    total = total + row(f[:, :, :-2], edge)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = total.clamp(0, 255).to(torch.uint8)
    return out


def sharpness(x, v):
    """PIL ``ImageEnhance.Sharpness``: blend with the smoothed image (factor > 1 sharpens)."""
    return _blend(_smooth(x), x, v)


OPS = {
    "Identity": identity,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "AutoContrast": auto_contrast,
    "Invert": invert,
    "Equalize": equalize,
    "Solarize": solarize,
    "Posterize": posterize,
    "Contrast": contrast,
    "Color": color,
    "Brightness": brightness,
    "Sharpness": sharpness,
}


# ---------------------------------------------------------------------------------------------
# Deep AutoAugment's search space: 139 (operation, magnitude) transformations
# ---------------------------------------------------------------------------------------------

# Order of aug_op_cifar_list() in DeepAA_utils.py of the Deep AutoAugment code
# (AIoT-MLSys-Lab/DeepAA); the last three are its RandFlip, RandCutout and RandCrop.
DEEPAA_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert",
    "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness", "Sharpness",
    "flip", "cutout", "pad_crop",
)
DEEPAA_LEVELS = 13

# The magnitude at which an op changes nothing; DeepAA leaves that level out of the space.
_NEUTRAL = {"ShearX": 0.0, "ShearY": 0.0, "TranslateX": 0.0, "TranslateY": 0.0, "Rotate": 0.0,
            "Solarize": 256.0, "Posterize": 8.0,
            "Contrast": 1.0, "Color": 1.0, "Brightness": 1.0, "Sharpness": 1.0}


def deepaa_table(large_images: bool = False) -> list[tuple[str, float | None]]:
    """Deep AutoAugment's 139 transformations as (op name, magnitude), in the authors' order.

    Each magnitude op gets 13 evenly spaced levels over its RANGES range, minus the level that
    changes nothing: 12 each. DeepAA maps level k to ``k / 12 * (hi - lo) + lo``; here the values
    are rounded to 10 decimals so that they print as -25.0, not -25.000000000000004. Ops without a
    magnitude count once (magnitude None), the stochastic ops once with their size: ("flip", None),
    ("cutout", 16), ("pad_crop", 4). ``large_images`` (DeepAA's ImageNet space) uses
    ("cutout", 60) and ("random_resized_crop", None) instead.
    """
    table = []
    for name in DEEPAA_OPS:
        if name in RANGES:
            lo, hi = RANGES[name]
            levels = [round(k / (DEEPAA_LEVELS - 1) * (hi - lo) + lo, 10) for k in range(DEEPAA_LEVELS)]
            table += [(name, m) for m in levels if m != _NEUTRAL[name]]
        elif name == "cutout":
            table.append((name, 60 if large_images else 16))
        elif name == "pad_crop":
            table.append(("random_resized_crop", None) if large_images else (name, 4))
        else:
            table.append((name, None))
    return table
