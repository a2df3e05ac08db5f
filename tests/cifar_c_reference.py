"""An independent per-image port of make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c/)
in numpy, PIL and scipy, used by tests/test_corruptions.py and tests/bench/bench_corruptions.py.

Each function takes one uint8 (32, 32, 3) image and returns uint8 (32, 32, 3), following the
original line by line with its CIFAR tables (retyped here, not imported from searchlab). Where the
original calls a library that is not installed here, the call is replaced by:

- skimage.filters.gaussian -> scipy.ndimage.gaussian_filter, sigma 0 on the channel axis, the
  same mode and truncate (skimage's defaults: mode 'nearest', truncate 4);
- skimage.util.random_noise(mode='s&p') -> its rule (hit with probability amount, half salt);
- skimage.color.rgb2hsv / hsv2rgb -> numpy ports of skimage's code;
- cv2.GaussianBlur / filter2D -> numpy (3x3 float32 blur) / scipy.ndimage.correlate with mode
  'mirror' (cv2's BORDER_REFLECT_101);
- cv2.getAffineTransform / warpAffine -> a 6x6 solve as cv2 does, and a pixel loop of cv2's
  fixed-point bilinear warp (1/32-pixel coordinates);
- cv2.cvtColor(RGB2GRAY) -> 0.299 R + 0.587 G + 0.114 B in float32;
- ImageMagick's MotionBlurImage (through Wand) -> a pixel loop of effect.c's algorithm; Wand and
  ImageMagick are not installed, so it is not compared with ImageMagick itself;
- PIL (pixelate, JPEG) and scipy.ndimage.zoom / map_coordinates are used as the original uses them.

Random draws are arguments (``draws``: the same numbers searchlab drew, for one image), so the
deterministic part of every random corruption can be compared exactly; the frost texture crop is
an argument too.
"""
import math
from io import BytesIO

import numpy as np
from PIL import Image
from scipy.ndimage import correlate, gaussian_filter, map_coordinates
from scipy.ndimage import zoom as scizoom


def gaussian(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian(x, sigma, multichannel=True) for (H, W, C), or (H, W)."""
    sigmas = (sigma, sigma, 0) if x.ndim == 3 else (sigma, sigma)
    return gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]


def motion_blur_kernel_apply(img, radius, sigma, angle):
    """ImageMagick MotionBlurImage on uint8 (H, W) or (H, W, C); see the module docstring.
    Vectorised over pixels (one numpy step per kernel tap), so that the benchmark does not time a
    Python pixel loop where the original ran ImageMagick's C."""
    width = int(2 * math.ceil(radius) + 1)
    kernel = np.array([math.exp(-(i * i) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
                       for i in range(width)])
    kernel /= kernel.sum()
    px = width * math.sin(math.radians(angle))
    py = width * math.cos(math.radians(angle))
    h, w = img.shape[:2]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros(img.shape, dtype=np.float64)
    for i in range(width):
        ox = math.ceil(i * py / math.hypot(px, py) - 0.5)
        oy = math.ceil(i * px / math.hypot(px, py) - 0.5)
        out += kernel[i] * img[np.clip(rows + oy, 0, h - 1), np.clip(cols + ox, 0, w - 1)]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def disk(radius, alias_blur=0.1):
    L = np.arange(-8, 8 + 1)
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    aliased_disk /= np.sum(aliased_disk)
    # cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur) in float32: rows then columns
    g = np.exp(-0.5 / (alias_blur * alias_blur) * np.array([1.0, 0.0, 1.0]))
    g = (g * (1.0 / g.sum())).astype(np.float32)  # getGaussianKernel scales by 1 / sum
    p = np.pad(aliased_disk, 1, mode="reflect")
    out = np.zeros((19, 17), np.float32)
    for j in range(3):
        out += p[:, j:j + 17] * g[j]
    res = np.zeros((17, 17), np.float32)
    for i in range(3):
        res += out[i:i + 17] * g[i]
    return res


def plasma_fractal(uniforms, mapsize=32, wibbledecay=3):
    """The original's diamond-square, with its np.random.uniform(-w, w, shape) calls served from
    ``uniforms`` (U[0, 1) arrays in call order)."""
    draws = iter(uniforms)
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        u = next(draws)
        assert u.shape == array.shape
        return array / 4 + wibble * (-wibble + (wibble - -wibble) * u)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = (drgrid + np.roll(drgrid, 1, axis=0)) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = (drgrid + np.roll(drgrid, 1, axis=1)) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay

    maparray -= maparray.min()
    return maparray / maparray.max()


def rgb2hsv(arr):
    """skimage.color.rgb2hsv (0.19+)."""
    out = np.empty_like(arr)
    out_v = arr.max(-1)
    delta = arr.ptp(-1) if hasattr(arr, "ptp") else np.ptp(arr, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
        out_s[delta == 0.] = 0.
        idx = (arr[..., 0] == out_v)
        out[idx, 0] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = (arr[..., 1] == out_v)
        out[idx, 0] = 2. + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = (arr[..., 2] == out_v)
        out[idx, 0] = 4. + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
        out_h = (out[..., 0] / 6.) % 1.
        out_h[delta == 0.] = 0.
    out[..., 0] = out_h
    out[..., 1] = out_s
    out[..., 2] = out_v
    out[np.isnan(out)] = 0
    return out


def hsv2rgb(arr):
    """skimage.color.hsv2rgb."""
    hi = np.floor(arr[..., 0] * 6)
    f = arr[..., 0] * 6 - hi
    p = arr[..., 2] * (1 - arr[..., 1])
    q = arr[..., 2] * (1 - f * arr[..., 1])
    t = arr[..., 2] * (1 - (1 - f) * arr[..., 1])
    v = arr[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), axis=-1), np.stack((q, v, p), axis=-1),
                                   np.stack((p, v, t), axis=-1), np.stack((p, q, v), axis=-1),
                                   np.stack((t, p, v), axis=-1), np.stack((v, p, q), axis=-1)]))


def get_affine_transform(src, dst):
    """cv2.getAffineTransform: the 6x6 system of imgwarp.cpp, solved in double."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[i, 0:3] = a[i + 3, 3:6] = (src[i][0], src[i][1], 1)
        b[i], b[i + 3] = dst[i][0], dst[i][1]
    return np.linalg.solve(a, b).reshape(2, 3)


def warp_affine(img, M):
    """cv2.warpAffine(img float32 (H, W, C), M, (W, H)), INTER_LINEAR, BORDER_REFLECT_101."""
    M = M.astype(np.float64).ravel().copy()
    D = M[0] * M[4] - M[1] * M[3]
    D = 1. / D if D != 0 else 0.
    A11, A22 = M[4] * D, M[0] * D
    M[0], M[1], M[3], M[4] = A11, M[1] * -D, M[3] * -D, A22
    b1 = -M[0] * M[2] - M[1] * M[5]
    b2 = -M[3] * M[2] - M[4] * M[5]
    M[2], M[5] = b1, b2
    h, w, _ = img.shape

    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    X0 = np.rint((M[1] * ys + M[2]) * 1024).astype(np.int64) + 16  # cvRound: half to even
    Y0 = np.rint((M[4] * ys + M[5]) * 1024).astype(np.int64) + 16
    X = (X0 + np.rint(M[0] * xs * 1024).astype(np.int64)) >> 5
    Y = (Y0 + np.rint(M[3] * xs * 1024).astype(np.int64)) >> 5
    ix, iy, fx, fy = X >> 5, Y >> 5, X & 31, Y & 31
    # cv2's float table: tab[i][j] = vy[i] * vx[j], vx = (1 - j/32, j/32) in float32
    vx0, vx1 = (1 - fx / 32).astype(np.float32), (fx / 32).astype(np.float32)
    vy0, vy1 = (1 - fy / 32).astype(np.float32), (fy / 32).astype(np.float32)

    def r101(i, n):
        i = i % (2 * n - 2)
        return np.where(i < n, i, 2 * n - 2 - i)

    def at(yy, xx):
        return img[r101(yy, h), r101(xx, w)]

    return (at(iy, ix) * (vy0 * vx0)[..., None] + at(iy, ix + 1) * (vy0 * vx1)[..., None]
            + at(iy + 1, ix) * (vy1 * vx0)[..., None] + at(iy + 1, ix + 1) * (vy1 * vx1)[..., None])


# ------------------------------------------------------------------------------------------------
# The corruptions: x uint8 (32, 32, 3) -> uint8 (32, 32, 3)
# ------------------------------------------------------------------------------------------------

def gaussian_noise(x, severity, draws):
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = np.array(x) / 255.
    # np.random.normal draws float64; draws given in float32 are widened first, so that c * z is
    # computed in float64 as in the original
    return np.uint8(np.clip(x + c * np.asarray(draws["normal"], dtype=np.float64), 0, 1) * 255)


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = np.array(x) / 255.
    return np.uint8(np.clip(rng.poisson(x * c) / c, 0, 1) * 255)


def impulse_noise(x, severity, draws):
    c = [.01, .02, .03, .05, .07][severity - 1]
    out = np.array(x) / 255.
    flipped, salted = draws["hit"] < c, draws["salt"] < 0.5
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0
    return np.uint8(np.clip(out, 0, 1) * 255)


def defocus_blur(x, severity, draws=None):
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = np.array(x) / 255.
    kernel = disk(radius=c[0], alias_blur=c[1]).astype(np.float64)
    channels = [correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)]
    return np.uint8(np.clip(np.array(channels).transpose((1, 2, 0)), 0, 1) * 255)


def glass_blur(x, severity, draws):
    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255., sigma=c[0]) * 255)
    for i in range(c[2]):
        for a, h in enumerate(range(32 - c[1], c[1], -1)):
            for b, w in enumerate(range(32 - c[1], c[1], -1)):
                dx, dy = draws["shift"][i, a, b]
                h_prime, w_prime = h + dy, w + dx
                # the original's statement, views and all
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.uint8(np.clip(gaussian(x / 255., sigma=c[0]), 0, 1) * 255)


def motion_blur(x, severity, draws):
    c = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    return motion_blur_kernel_apply(np.array(x), c[0], c[1], float(draws["angle"]))


def zoom_blur(x, severity, draws=None):
    c = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]
    x = (np.array(x) / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += clipped_zoom(x, zoom_factor)
    x = (x + out) / (len(c) + 1)
    return np.uint8(np.clip(x, 0, 1) * 255)


def snow(x, severity, draws):
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
         (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.
    snow_layer = draws["layer"]  # np.random.normal(size=(32, 32), loc=c[0], scale=c[1])
    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0
    snow_layer = (np.clip(snow_layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    snow_layer = motion_blur_kernel_apply(snow_layer, c[4], c[5], float(draws["angle"])) / 255.
    snow_layer = snow_layer[..., np.newaxis]
    gray = (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)) + x[..., 2] * np.float32(0.114)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray.reshape(32, 32, 1) * 1.5 + 0.5)
    return np.uint8(np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255)


def frost(x, severity, frost_crop):
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    return np.uint8(np.clip(c[0] * np.array(x) + c[1] * frost_crop, 0, 255))


def fog(x, severity, draws):
    c = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = np.array(x) / 255.
    max_val = x.max()
    x += c[0] * plasma_fractal(draws["uniform"], wibbledecay=c[1])[:32, :32][..., np.newaxis]
    return np.uint8(np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255)


def brightness(x, severity, draws=None):
    c = [.05, .1, .15, .2, .3][severity - 1]
    x = np.array(x) / 255.
    x = rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = hsv2rgb(x)
    return np.uint8(np.clip(x, 0, 1) * 255)


def contrast(x, severity, draws=None):
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = np.array(x) / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.uint8(np.clip((x - means) * c + means, 0, 1) * 255)


def elastic_transform(image, severity, draws):
    IMSIZE = 32
    c = [(IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
         (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
         (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
         (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
         (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)][severity - 1]
    image = np.array(image, dtype=np.float32) / 255.
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    pts2 = pts1 + draws["affine"]  # np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = get_affine_transform(pts1, pts2)
    image = warp_affine(image, M)
    dx = (gaussian(draws["dx"], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(draws["dy"], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    out = map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.uint8(np.clip(out, 0, 1) * 255)


def pixelate(x, severity, draws=None):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    x = Image.fromarray(np.asarray(x))
    x = x.resize((int(32 * c), int(32 * c)), Image.BOX)
    x = x.resize((32, 32), Image.BOX)
    return np.uint8(x)


def jpeg_compression(x, severity, draws=None):
    c = [80, 65, 58, 50, 40][severity - 1]
    output = BytesIO()
    Image.fromarray(np.asarray(x)).save(output, "JPEG", quality=c)
    return np.uint8(Image.open(output))


REFERENCE = {f.__name__: f for f in [
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression]}
