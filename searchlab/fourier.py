"""Fourier sensitivity of a classifier: the heat map of Yin et al. and accuracy under low-pass filtering.

Yin, Gontijo Lopes, Shlens, Cubuk, Gilmer (2019), "A Fourier perspective on model robustness in
computer vision" (arXiv:1906.08988): add one real Fourier basis image U_ij, scaled to L2 norm eps
and with a random sign per image and channel, to every test image and record the test error; the
map of errors over (i, j) shows which frequencies the model is sensitive to. The conventions
follow google-research ``frequency_analysis/freq_heatmap.py`` (``_get_fourier_basis``,
``_get_symmetric_pos``, ``rand_flip``), so maps are comparable with the paper's.

Index convention, used by every function here: position (i, j) of a map of side ``size`` is a
position of the fftshift-ed spectrum, i.e. frequency (i - size // 2, j - size // 2) cycles per
image. The DC term sits at (size // 2, size // 2): (16, 16) for 32x32, (3, 3) for 7x7. Low
frequencies are in the centre, high ones at the border.

A model is seen through ``heads(x) -> {name: logits (N, classes)}``, x being the normalised batch
that ``searchlab.data.normalize`` would make. A plain model has one head; a split-BatchNorm model
has one per evaluation lambda. Every function calls ``heads`` once per perturbed batch and scores
all heads on that same batch, so that heads differ only by what they compute, never by the noise
they saw. Pure functions of their inputs and generator; no Ray.
"""
import numpy as np
import torch

from searchlab.data import Split, batches

# --- Fourier basis ---------------------------------------------------------------------------------

def conjugate(size, i, j):
    """The position whose frequency is minus that of (i, j), in the fftshift-ed layout.

    In that layout index k holds frequency k - size // 2, so -f sits at 2 * (size // 2) - k,
    taken modulo size because the DFT is periodic. For odd sizes this is the point reflection
    size - 1 - k about the centre. For even sizes it is size - k, except that k = 0 (frequency
    -size/2, the Nyquist frequency, which equals +size/2) maps to itself: row 0 pairs with row 0
    and column 0 with column 0, as in ``_get_symmetric_pos`` of freq_heatmap.py.
    """
    centre = 2 * (size // 2)
    return (centre - i) % size, (centre - j) % size


def _spectrum(size, i, j):
    """The fftshift-ed spectrum whose inverse transform is the basis image at (i, j), unscaled.

    0.5+0.5i at one position of the conjugate pair and 0.5-0.5i at the other, or 1 at a position
    that is its own conjugate. Which member gets 0.5+0.5i decides between two different real
    images (cos - sin versus cos + sin); freq_heatmap.py builds the pair once, while scanning
    positions in row-major order, and stores the same image at both positions. Giving 0.5+0.5i to
    the member that comes first in row-major order reproduces that, so U_ij equals the U of its
    conjugate position.
    """
    if not (0 <= i < size and 0 <= j < size):
        raise ValueError(f"basis position ({i}, {j}) is outside a {size}x{size} spectrum; valid: "
                         f"0 <= i, j < {size}")
    spectrum = np.zeros((size, size), dtype=np.complex128)
    mirror_pos = conjugate(size, i, j)
    if mirror_pos == (i, j):
        spectrum[i, j] = 1.0
    else:
        first, second = sorted([(i, j), mirror_pos])
        spectrum[first] = 0.5 + 0.5j
        spectrum[second] = 0.5 - 0.5j
    return spectrum


def basis(size, i, j):
    """The real Fourier basis image U_ij, (size, size) float64 with unit L2 norm.

    For a conjugate pair with frequency (fi, fj) at the row-major-first member, U_ij(m, n) =
    (cos t - sin t) / size with t = 2 pi (fi m + fj n) / size; the DC basis is the constant
    1 / size. The inverse FFT of a conjugate-symmetric spectrum is real, so taking the real part
    only drops rounding error; by Parseval its norm is 1 / size, hence the factor size
    (freq_heatmap.py's sqrt(height * width)).
    """
    image = np.fft.ifft2(np.fft.ifftshift(_spectrum(size, i, j)))
    return size * image.real


# --- half plane and mirror -------------------------------------------------------------------------

def half_plane(size):
    """The positions to evaluate: the row-major-first member of every conjugate pair, in row-major
    order (plus the positions that are their own conjugate). The other member of a pair has the
    same basis image (see ``_spectrum``), so its value follows by symmetry (``mirror``).

    For even sizes the conjugate is taken modulo size (see ``conjugate``): row 0 and column 0 hold
    the Nyquist frequency and pair among themselves, so no position has a conjugate outside the
    map and the mirrored map has no holes. (A naive point reflection about the centre would send
    row 0 to row ``size``, outside the map; implementations that do that evaluate a size x
    (size/2 + 1) half plane and show a (size-1)x(size-1) map.) For 32x32 this is 514 positions:
    rows 0-15 except (0, 17..31), and (16, 0..16).
    """
    return [(i, j) for i in range(size) for j in range(size) if (i, j) <= conjugate(size, i, j)]


def mirror(values, size):
    """The full (size, size) map from ``values[k]``, the value at ``half_plane(size)[k]``: each
    value is written at its position and at the conjugate position (point symmetry about the
    centre, modulo size for even sizes)."""
    positions = half_plane(size)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(positions),):
        raise ValueError(f"mirror needs one value per half-plane position of a {size}x{size} map "
                         f"({len(positions)}), got shape {values.shape}")
    full = np.full((size, size), np.nan)
    for (i, j), value in zip(positions, values):
        full[i, j] = value
        full[conjugate(size, i, j)] = value
    return full


# --- shared helpers --------------------------------------------------------------------------------

def _check_images(x_uint8, y):
    if (x_uint8.dtype != torch.uint8 or x_uint8.ndim != 4 or len(x_uint8) == 0
            or x_uint8.shape[-1] != x_uint8.shape[-2]):
        raise ValueError(f"images must be uint8 (N, C, S, S) with N >= 1, got {x_uint8.dtype} "
                         f"{tuple(x_uint8.shape)}")
    if y.shape != (len(x_uint8),):
        raise ValueError(f"labels must have shape ({len(x_uint8)},), got {tuple(y.shape)}")
    return x_uint8.shape[-1]


def _standardize(x01, mean, std):
    """Images in [0, 1] -> the model's input: what ``searchlab.data.normalize`` does after its
    division by 255 (same arithmetic, same channels-last layout), so that an unperturbed batch is
    bit-identical to normalize(x_uint8)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x01.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=x01.device)
    x = x01.contiguous(memory_format=torch.channels_last)
    return (x - mean[:, None, None]) / std[:, None, None]


def _to_01(x_uint8):
    return x_uint8.float().div_(255)


class _Tally:
    """Per-head counts of wrong predictions, with a check that every call returns the same heads."""

    def __init__(self, slots, device):
        self.slots, self.device, self.wrong = slots, device, None

    def add(self, outputs, labels, slot):
        if self.wrong is None:
            self.wrong = {name: torch.zeros(self.slots, dtype=torch.float64, device=self.device)
                          for name in outputs}
        if outputs.keys() != self.wrong.keys():
            raise ValueError(f"heads returned {sorted(outputs)} after {sorted(self.wrong)}; it must "
                             f"return the same heads for every batch")
        for name, logits in outputs.items():
            self.wrong[name].index_add_(0, slot, (logits.argmax(1) != labels).double())


# --- heat map --------------------------------------------------------------------------------------

def _error_rates(heads, x01, y, mean, std, eps, bases, signs, batch_size):
    """Error of every head under each perturbation: {name: (P,) numpy}, P = len(bases).

    Image n perturbed by basis p is x01[n] + eps * signs[p, n, c] * bases[p] in channel c, clipped
    to [0, 1]. The P x N perturbed images are enumerated position-major and cut into forward
    passes of ``batch_size`` images, so a pass may span several bases: small image sets still
    make full batches, and memory stays bounded by batch_size whatever N is.
    """
    n_images = len(x01)
    total = len(bases) * n_images
    tally = _Tally(len(bases), x01.device)
    with torch.no_grad():
        for start in range(0, total, batch_size):
            k = torch.arange(start, min(start + batch_size, total), device=x01.device)
            pos, img = k // n_images, k % n_images
            shift = (eps * signs[pos, img].float())[:, :, None, None] * bases[pos][:, None]
            tally.add(heads(_standardize((x01[img] + shift).clamp_(0, 1), mean, std)), y[img], pos)
    return {name: (wrong / n_images).cpu().numpy() for name, wrong in tally.wrong.items()}


def heatmap(heads, x_uint8, y, mean, std, eps=8.0, batch_size=1000, generator=None, size=None):
    """Fourier heat map of test error: {head: (size, size) float64 error rates in [0, 1]}.

    ``eps`` is the L2 norm of the perturbation of each channel of a [0, 1] image (unit basis times
    eps), applied before normalisation; the sign r of each image and channel is +1 or -1 with
    equal probability, drawn from ``generator`` (torch's global generator when None), one draw
    per (half-plane position, image, channel) made up front, so the map does not depend on
    ``batch_size``. Perturbed images are clipped to [0, 1]. All of ``x_uint8`` is used: pass the
    subset to evaluate.

    ``size`` (default: the image side S) is the side of the centred square of frequencies mapped:
    S for the whole spectrum, or an odd number for the (size x size) lowest frequencies, which
    costs about size^2 / S^2 of the full map; entry (a, b) of the map is then spectrum position
    (a + S // 2 - size // 2, b + S // 2 - size // 2), the DC term still in the centre. Odd, so
    that the window is closed under conjugation and its half plane and mirror are those of a
    size x size spectrum.
    """
    side = _check_images(x_uint8, y)
    size = side if size is None else size
    if not (size == side or (size % 2 == 1 and 0 < size <= side)):
        raise ValueError(f"size must be the image side {side} or an odd number in 1..{side}, "
                         f"got {size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offset = side // 2 - size // 2
    positions = half_plane(size)
    device = x_uint8.device
    bases = torch.from_numpy(np.stack([basis(side, i + offset, j + offset) for i, j in positions]))
    bases = bases.to(device=device, dtype=torch.float32)
    draw_on = generator.device if generator is not None else "cpu"
    signs = torch.randint(0, 2, (len(positions), len(x_uint8), x_uint8.shape[1]),
                          generator=generator, device=draw_on, dtype=torch.int8)
    signs = (2 * signs - 1).to(device)
    errors = _error_rates(heads, _to_01(x_uint8), y, mean, std, eps, bases, signs, batch_size)
    return {name: mirror(values, size) for name, values in errors.items()}


# --- low-pass filtering ----------------------------------------------------------------------------

def _square_mask(size, width, device):
    """True on the centred width x width square of the fftshift-ed spectrum: rows and columns
    size // 2 - width // 2 to size // 2 - width // 2 + width - 1, i.e. frequencies -(width // 2)
    to width - 1 - width // 2. Width 1 keeps the DC term; width 2 on 32 keeps rows/columns 15 and
    16 (frequencies -1 and 0); width 3 keeps 15..17; width 32 keeps 0..31, everything."""
    if not 1 <= width <= size:
        raise ValueError(f"low-pass width must be in 1..{size}, got {width}")
    low = size // 2 - width // 2
    keep = torch.zeros(size, dtype=torch.bool, device=device)
    keep[low:low + width] = True
    return keep[:, None] & keep[None, :]


def _shifted_spectrum(x01):
    return torch.fft.fftshift(torch.fft.fft2(x01), dim=(-2, -1))


def _filtered(spectrum, width):
    """Real part of the inverse transform of the spectrum restricted to the square.

    For odd widths (and width = size) the square is closed under conjugation and the result is
    exactly the low-passed image. For even widths < size the edge frequency -width/2 is kept
    without its partner +width/2; taking the real part then keeps that component at half its
    amplitude (Re z = (z + conj z) / 2 puts half the weight on each of the pair).
    """
    size = spectrum.shape[-1]
    masked = spectrum * _square_mask(size, width, spectrum.device)
    return torch.fft.ifft2(torch.fft.ifftshift(masked, dim=(-2, -1))).real


def lowpass(x01, width):
    """Keep the Fourier components of (..., S, S) images inside the centred width x width square
    of the fftshift-ed spectrum (see ``_square_mask``); real output, same shape, not clipped.
    Width S is the identity, width 1 the per-image per-channel mean."""
    if x01.shape[-1] != x01.shape[-2]:
        raise ValueError(f"lowpass needs square images (..., S, S), got {tuple(x01.shape)}")
    return _filtered(_shifted_spectrum(x01), width)


def lowpass_accuracy(heads, x_uint8, y, mean, std, widths=None, batch_size=1000):
    """Accuracy of every head on low-pass filtered images: {head: float64 array, one per width}.

    Each [0, 1] image is filtered (``lowpass``), clipped to [0, 1] and normalised; ``heads`` runs
    once per batch and width. ``widths`` defaults to 1..S, S the image side (1..32 for CIFAR).
    """
    side = _check_images(x_uint8, y)
    widths = list(range(1, side + 1) if widths is None else widths)
    for width in widths:
        _square_mask(side, width, "cpu")  # fail on a bad width before any forward pass
    tally = _Tally(len(widths), x_uint8.device)
    with torch.no_grad():
        for xb, yb in batches(Split(x_uint8, y), batch_size):
            spectrum = _shifted_spectrum(_to_01(xb))  # once per batch, masked per width
            for w, width in enumerate(widths):
                x = _standardize(_filtered(spectrum, width).clamp_(0, 1), mean, std)
                slot = torch.full((len(yb),), w, device=x_uint8.device)
                tally.add(heads(x), yb, slot)
    return {name: 1 - (wrong / len(y)).cpu().numpy() for name, wrong in tally.wrong.items()}
