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

Besides ``OPS``, ``MATRICES`` gives the geometric ops' per-image affine matrices and ``LUTS`` the
per-image lookup tables of the ops that map pixel values, so that a batch whose images drew different
ops warps them in one call and looks them up in one call (policies.apply_per_image).

Geometric ops compute in float64, which CPU and CUDA support (MPS has no float64).
"""
import math

import torch

# Deep AutoAugment's ``augmentation.py`` (AIoT-MLSys-Lab/DeepAA) calls ``img.transform`` and
# ``img.rotate`` without ``fillcolor``, so PIL fills the uncovered area with black; so do Fast
# AutoAugment and torchvision's AutoAugment. timm's RandAugment uses 128 instead: pass ``fill=128``.
# (DeepAA's crop and cutout use the CIFAR mean colour instead: policies.DEEPAA_FILL.)
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

def affine(x, matrix, fill=FILL):
    """Warp each image by its own (2, 3) matrix exactly as PIL's ``Image.transform(AFFINE)`` does.

    ``matrix`` (N, 2, 3) float64 is PIL's ``data``: it maps an output pixel centre (x + .5, y + .5)
    to input coordinates, and the input pixel is the one containing that point (floor). Images may
    mix shears, rotations and translations: each takes PIL's path for its own matrix.
    """
    n, c, h, w = x.shape
    a0, a1, a2, a3, a4, a5 = matrix.reshape(n, 6, 1, 1).unbind(1)  # each (N, 1, 1)
    ys = torch.arange(h, dtype=torch.float64, device=x.device).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float64, device=x.device).view(1, 1, w)

    # PIL's general path (affine_fixed, taken while coordinates stay within +-32768): 16.16 fixed
    # point. The coefficients are rounded once, then coordinates are exact integer sums, so doing
    # the same reproduces PIL bit for bit; plain float coordinates would disagree with PIL wherever
    # a pixel centre falls on a pixel border (13% of the values at ShearX 0.2). The integers are
    # held in doubles, which add them exactly and run much faster than int64 on CPU.
    def fix(t):
        return torch.floor(t * 65536.0 + 0.5)

    # Matrices without shear or rotation (translations) take PIL's scale path instead, which works
    # in doubles without fixed point (the two differ when a pixel centre lands within 2**-17 of a
    # pixel border). Its coordinates depend on x alone (or y alone) and are written in 16.16 too, so
    # both paths are one per-row term plus one per-column term, chosen per image while still small.
    scale = (a1 == 0) & (a3 == 0)  # (N, 1, 1)
    x_row = torch.where(scale, 0.0, fix(a2 + a0 * 0.5 + a1 * 0.5) + ys * fix(a1))  # (N, H, 1)
    x_col = torch.where(scale, torch.floor(a2 + a0 * 0.5 + xs * a0) * 65536.0, xs * fix(a0))  # (N, 1, W)
    y_row = torch.where(scale, torch.floor(a5 + a4 * 0.5 + ys * a4) * 65536.0,
                        fix(a5 + a3 * 0.5 + a4 * 0.5) + ys * fix(a4))
    y_col = torch.where(scale, 0.0, xs * fix(a3))

    # Sample from the images framed by one pixel of fill: a coordinate outside the image, clamped
    # onto that frame, reads the fill, with no mask to compute or apply.
    x_in = (x_row + x_col).mul_(2.0 ** -16).floor_().clamp_(-1, w)  # (N, H, W)
    y_in = (y_row + y_col).mul_(2.0 ** -16).floor_().clamp_(-1, h)
    index = (y_in.mul_(w + 2).add_(x_in).add_(w + 3)).long().view(n, 1, h * w).expand(n, c, h * w)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)  # scalar or (C,)
    framed = x.new_empty(n, c, h + 2, w + 2)
    framed[:] = fill
    framed[:, :, 1:-1, 1:-1] = x
    return framed.view(n, c, -1).gather(2, index).view(n, c, h, w)


def _matrix(v, entries):
    """(N, 2, 3) float64 matrices from PIL's six ``data`` entries, each per image (N,) or a number."""
    matrix = torch.zeros(len(v), 6, dtype=torch.float64, device=v.device)
    for k, entry in enumerate(entries):
        if torch.is_tensor(entry) or entry != 0:
            matrix[:, k] = entry
    return matrix.view(-1, 2, 3)


# Each geometric op's per-image matrices, ``matrix(v, height, width)`` for float64 magnitudes v (N,):
# a batch mixing geometric ops warps in one ``affine`` call (see policies.apply_per_image).

def shear_x_matrix(v, h, w):
    """PIL ``transform(AFFINE, (1, v, 0, 0, 1, 0))``: input x = output x + v * output y."""
    return _matrix(v, (1, v, 0, 0, 1, 0))


def shear_y_matrix(v, h, w):
    """PIL ``transform(AFFINE, (1, 0, 0, v, 1, 0))``."""
    return _matrix(v, (1, 0, 0, v, 1, 0))


def translate_x_matrix(v, h, w):
    """PIL ``transform(AFFINE, (1, 0, v * width, 0, 1, 0))``: v is a fraction of the width."""
    return _matrix(v, (1, 0, v * w, 0, 1, 0))


def translate_y_matrix(v, h, w):
    """PIL ``transform(AFFINE, (1, 0, 0, 0, 1, v * height))``: v is a fraction of the height."""
    return _matrix(v, (1, 0, 0, 0, 1, v * h))


def rotate_matrix(v, h, w):
    """PIL ``img.rotate(v)``: v degrees counter-clockwise about the image centre, nearest."""
    # Image.rotate's matrix, step by step in doubles: entries rounded to 15 decimals as PIL does,
    # so that e.g. cos(90 degrees) is exactly 0.
    angle = -(v.remainder(360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle), decimals=15)
    sin = torch.round(torch.sin(angle), decimals=15)
    cx, cy = w / 2, h / 2
    c = cos * -cx + sin * -cy + 0.0 + cx
    f = -sin * -cx + cos * -cy + 0.0 + cy
    return _matrix(v, (cos, sin, c, -sin, cos, f))


MATRICES = {
    "ShearX": shear_x_matrix,
    "ShearY": shear_y_matrix,
    "TranslateX": translate_x_matrix,
    "TranslateY": translate_y_matrix,
    "Rotate": rotate_matrix,
}


def _warp(name, x, v, fill):
    return affine(x, MATRICES[name](_magnitudes(v, x), *x.shape[2:]), fill)


def shear_x(x, v, fill=FILL):
    return _warp("ShearX", x, v, fill)


def shear_y(x, v, fill=FILL):
    return _warp("ShearY", x, v, fill)


def translate_x(x, v, fill=FILL):
    return _warp("TranslateX", x, v, fill)


def translate_y(x, v, fill=FILL):
    return _warp("TranslateY", x, v, fill)


def rotate(x, v, fill=FILL):
    return _warp("Rotate", x, v, fill)


# ---------------------------------------------------------------------------------------------
# Lookup-table ops: pixel value maps, per image and channel
# ---------------------------------------------------------------------------------------------
# These ops (and Contrast and Brightness below) map each pixel value through a table that depends
# only on the image and channel. ``LUTS[name](x, v)`` builds those tables, uint8 (N, C or 1, 1, 256),
# and ``apply_lut`` applies them, so a batch mixing such ops costs one lookup (see
# policies.apply_per_image). An op that maps each value on its own builds its table by running on
# the 256 values themselves, so table and op agree bit for bit.

def apply_lut(x, lut):
    """Map each pixel of x (N, C, H, W) through its image's (and channel's) table (N, C or 1, 1, 256)."""
    n, c = x.shape[:2]
    table = lut.expand(n, c, 1, 256).reshape(n * c, 256)
    return table.gather(1, x.reshape(n * c, -1).long()).view(x.shape)


def _values(x):
    """The 256 pixel values as one uint8 (1, 256) image per image of x: (N, 1, 1, 256)."""
    return torch.arange(256, dtype=torch.uint8, device=x.device).expand(x.shape[0], 1, 1, 256)


def _value_wise_lut(op):
    """The table of an op that maps each value independently of the others: op(the 256 values)."""
    return lambda x, v=None: op(_values(x), v)


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
    """Per-image, per-channel histograms (N, C, 256) int64."""
    pixels = x.reshape(x.shape[0] * x.shape[1], -1).long()
    hist = torch.zeros(pixels.shape[0], 256, dtype=torch.long, device=x.device)
    return hist.scatter_add_(1, pixels, torch.ones_like(pixels)).view(x.shape[0], x.shape[1], 256)


def _to_lut(lut):
    """int64 (N, C, 256) values -> a uint8 table (N, C, 1, 256), clipped to [0, 255]."""
    return lut.clamp(0, 255).to(torch.uint8).unsqueeze(2)


def auto_contrast_lut(x, v=None):
    """PIL ``ImageOps.autocontrast``: stretch each channel's [lowest, highest] value to [0, 255]."""
    lo = x.amin((2, 3)).unsqueeze(2).long()  # (N, C, 1)
    hi = x.amax((2, 3)).unsqueeze(2).long()
    bins = torch.arange(256, device=x.device)
    # PIL: scale = 255.0 / (hi - lo); offset = -lo * scale; lut = int(i * scale + offset), in doubles.
    # (A true division: torch computes ``number / tensor`` as a reciprocal times the number,
    # which is off by an ulp often enough to move a pixel.)
    scale = torch.full_like(lo, 255, dtype=torch.float64) / (hi - lo).clamp(min=1)
    offset = -lo.double() * scale
    lut = (bins.double() * scale + offset).trunc().long()
    return _to_lut(torch.where(hi > lo, lut, bins))


def equalize_lut(x, v=None):
    """PIL ``ImageOps.equalize``: per channel, map values through the cumulative histogram."""
    hist = _histograms(x)
    bins = torch.arange(256, device=x.device)
    last = x.amax((2, 3)).unsqueeze(2).long()  # the highest value present, (N, C, 1)
    # PIL: step = (number of pixels - count in the highest non-empty bin) // 255;
    # lut[i] = (step // 2 + pixels below value i) // step; step 0 leaves the channel unchanged.
    step = (x.shape[2] * x.shape[3] - hist.gather(2, last)) // 255
    below = hist.cumsum(2) - hist
    lut = (step // 2 + below) // step.clamp(min=1)
    return _to_lut(torch.where(step > 0, lut, bins))


def auto_contrast(x, v=None):
    return apply_lut(x, auto_contrast_lut(x))


def equalize(x, v=None):
    return apply_lut(x, equalize_lut(x))


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


def _grey_mean(x):
    """The grey image's mean, rounded as PIL's int(mean + 0.5): (N, 1, 1, 1) int64."""
    grey = _grey(x).flatten(1)
    total, count = grey.sum(1, dtype=torch.int64), grey.shape[1]
    # In integers, floor(total / count + 1/2), equal to PIL's doubles because a mean that is not
    # exactly k + 1/2 is at least 1/(2 count) away from it.
    return ((2 * total + count) // (2 * count)).view(-1, 1, 1, 1)


def contrast(x, v):
    """PIL ``ImageEnhance.Contrast``: blend with a flat image of the grey image's rounded mean."""
    return _blend(_grey_mean(x), x, v)


def contrast_lut(x, v):
    return _blend(_grey_mean(x), _values(x), v)


def color(x, v):
    """PIL ``ImageEnhance.Color``: blend with the grey version (grey images stay unchanged)."""
    return _blend(_grey(x), x, v)


def brightness(x, v):
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros((), device=x.device), x, v)


# ImageFilter.SMOOTH's weights divided by its scale 13 in float32, as _imaging.c does.
_SMOOTH_EDGE, _SMOOTH_CENTRE = (torch.tensor([1.0, 5.0], dtype=torch.float32) / 13.0).tolist()


def _smooth(f):
    """The interior (N, C, H - 2, W - 2) of PIL ``img.filter(ImageFilter.SMOOTH)`` (Filter.c) of
    float32 images f (N, C, H, W) holding uint8 values: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13 in
    float32 with PIL's order of additions, +0.5 and truncation, kept in float32."""
    edge = f * torch.tensor(_SMOOTH_EDGE, dtype=torch.float32, device=f.device)
    centre = f * torch.tensor(_SMOOTH_CENTRE, dtype=torch.float32, device=f.device)
    # Filter.c sums each kernel row left to right, then the rows: the row below first, the middle
    # row, the row above. The rows above and below weigh all three pixels alike, so they are one
    # horizontal sum, sliced.
    outer = (edge[..., :-2] + edge[..., 1:-1]) + edge[..., 2:]  # (N, C, H, W - 2)
    middle = (edge[:, :, 1:-1, :-2] + centre[:, :, 1:-1, 1:-1]) + edge[:, :, 1:-1, 2:]
    total = ((0.5 + outer[:, :, 2:]) + middle) + outer[:, :, :-2]
    return total.clamp_(0, 255).floor_()  # the uint8 PIL stores: truncation, which is floor here


def sharpness(x, v):
    """PIL ``ImageEnhance.Sharpness``: blend with the smoothed image (factor > 1 sharpens).

    PIL leaves the border unfiltered (and images smaller than the kernel altogether), and blending
    a pixel with itself gives it back, so only the interior changes."""
    out = x.clone()
    if min(x.shape[2:]) >= 3:
        f = x.float()
        out[:, :, 1:-1, 1:-1] = _blend(_smooth(f), f[:, :, 1:-1, 1:-1], v)
    return out


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

# The ops that a batch applies as tables. Identity, Invert and Posterize are not among them: each is
# one cheap tensor operation, cheaper on its own than its share of a table lookup.
LUTS = {
    "AutoContrast": auto_contrast_lut,
    "Equalize": equalize_lut,
    "Solarize": _value_wise_lut(solarize),
    "Contrast": contrast_lut,
    "Brightness": _value_wise_lut(brightness),
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
    ("cutout", 60) and ("random_resized_crop", None) instead. The table holds no fill colour:
    ``policies.deepaa`` pads the crop and fills the cutout with its ``fill``, by default the
    authors' CIFAR mean colour (125, 123, 114).
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
