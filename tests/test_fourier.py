"""Tests for searchlab.fourier against closed forms: the cosine formula of the basis, numpy.fft, and
"models" that read one Fourier coefficient, whose errors under perturbation are known exactly."""
import numpy as np
import pytest
import torch

from searchlab.data import normalize
from searchlab.fourier import (
    _error_rates,
    _spectrum,
    basis,
    conjugate,
    half_plane,
    heatmap,
    lowpass,
    lowpass_accuracy,
    mirror,
)
from searchlab.models import build_model

MEAN = torch.tensor([0.5, 0.4, 0.3])
STD = torch.tensor([0.25, 0.2, 0.3])


def shifted_freqs(size):
    """Integer frequency of each index of the fftshift-ed layout, from numpy (not from the module)."""
    return np.fft.fftshift(np.fft.fftfreq(size, 1 / size)).round().astype(int)


def unnormalize(x):
    return x * STD[:, None, None] + MEAN[:, None, None]


def projection(x, u, channel=0):
    """<image channel, u> of normalised images x: what the linear "models" below read."""
    return (unnormalize(x)[:, channel].double() * torch.from_numpy(u)).sum((-2, -1))


def as_logits(is_one):
    """Two-class logits that pick class 1 exactly where ``is_one``."""
    return torch.stack([~is_one, is_one], 1).float()


def images_along(u, amplitudes, channels=3):
    """uint8 images 128 + 255 * a * u in channel 0 (a per image), flat 128 elsewhere."""
    x = np.full((len(amplitudes), channels) + u.shape, 128 / 255)
    x[:, 0] += np.asarray(amplitudes, dtype=np.float64)[:, None, None] * u
    assert 0 < x.min() and x.max() < 1  # no clipping, so the projections are as designed
    return torch.from_numpy(np.rint(x * 255).astype(np.uint8))


# --- basis -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [7, 8, 32])
def test_basis_is_real_unit_norm_and_equal_at_the_conjugate_position(size):
    for i in range(size):
        for j in range(size):
            u = basis(size, i, j)
            assert u.dtype == np.float64 and u.shape == (size, size)
            assert np.linalg.norm(u) == pytest.approx(1, abs=1e-12)
            complex_image = np.fft.ifft2(np.fft.ifftshift(_spectrum(size, i, j)))
            assert np.abs(complex_image.imag).max() < 1e-15
            np.testing.assert_array_equal(u, basis(size, *conjugate(size, i, j)))


def test_dc_basis_is_constant_and_the_centre_is_dc():
    assert conjugate(32, 16, 16) == (16, 16)
    np.testing.assert_allclose(basis(32, 16, 16), np.full((32, 32), 1 / 32), rtol=0, atol=1e-15)
    np.testing.assert_allclose(basis(7, 3, 3), np.full((7, 7), 1 / 7), rtol=0, atol=1e-15)


@pytest.mark.parametrize("size,i,j", [(32, 14, 16), (32, 3, 29), (32, 0, 5), (32, 20, 0), (7, 1, 5)])
def test_basis_matches_the_cosine_formula(size, i, j):
    """U = (cos t - sin t) / size, t = 2 pi (fi m + fj n) / size, with (fi, fj) the frequency of
    the row-major-first member of the conjugate pair."""
    first = min((i, j), conjugate(size, i, j))
    fi, fj = shifted_freqs(size)[list(first)]
    m, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    t = 2 * np.pi * (fi * m + fj * n) / size
    np.testing.assert_allclose(basis(size, i, j), (np.cos(t) - np.sin(t)) / size, atol=1e-14)


@pytest.mark.parametrize("size", [8, 32, 7])
def test_basis_spectrum_sits_at_exactly_the_two_conjugate_frequencies(size):
    freqs = shifted_freqs(size)
    for i, j in [(1, 2), (size // 2, size // 2 + 1), (size - 1, size // 2), (0, 3), (0, 0)]:
        energy = np.abs(np.fft.fft2(basis(size, i, j))) ** 2  # numpy's unshifted layout
        f_all = np.fft.fftfreq(size, 1 / size).round().astype(int)
        expected = np.zeros((size, size), dtype=bool)
        for si, sj in [(1, 1), (-1, -1)]:  # +f and -f, wrapped into numpy's frequency range
            rows = f_all == (si * freqs[i] + size // 2) % size - size // 2
            cols = f_all == (sj * freqs[j] + size // 2) % size - size // 2
            expected |= rows[:, None] & cols[None, :]
        assert energy[~expected].max() < 1e-20
        assert energy.sum() == pytest.approx(size * size)  # Parseval: unit norm
        assert 1 <= expected.sum() <= 2


# --- half plane and mirror -------------------------------------------------------------------------

def test_half_plane_holds_one_member_of_every_conjugate_pair():
    assert len(half_plane(32)) == 514  # (1024 - 4 self-conjugate) / 2 + 4
    assert len(half_plane(7)) == 25
    for size in (7, 8, 32):
        half = half_plane(size)
        covered = set(half) | {conjugate(size, *p) for p in half}
        assert covered == {(i, j) for i in range(size) for j in range(size)}
        pairs = [p for p in half if conjugate(size, *p) != p]
        assert not set(pairs) & {conjugate(size, *p) for p in pairs}
    assert (16, 16) in half_plane(32) and (0, 17) not in half_plane(32) and (0, 15) in half_plane(32)


@pytest.mark.parametrize("size", [7, 8, 32])
def test_mirror_of_a_symmetric_function_is_that_function(size):
    f = shifted_freqs(size)
    g = lambda i, j: abs(f[i]) * 100 + f[j] ** 2
    full = mirror([g(i, j) for i, j in half_plane(size)], size)
    np.testing.assert_array_equal(full, [[g(i, j) for j in range(size)] for i in range(size)])


def test_mirrored_half_plane_equals_the_map_evaluated_at_every_position():
    """A real (random) CNN on random images, the same sign pattern for every position: evaluating
    all 64 positions directly must give the mirrored 34-position map exactly."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10).eval().double()
    heads = lambda x: {"cnn": model(x.double())}
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        y = model(normalize(x, MEAN, STD).double()).argmax(1)
    x01 = x.float() / 255
    one_draw = torch.randint(0, 2, (1, 16, 3), dtype=torch.int8) * 2 - 1

    def errors(positions):
        bases = torch.from_numpy(np.stack([basis(8, *p) for p in positions])).float()
        signs = one_draw.expand(len(positions), -1, -1)
        return _error_rates(heads, x01, y, MEAN, STD, 4.0, bases, signs, batch_size=64)["cnn"]

    everywhere = errors([(i, j) for i in range(8) for j in range(8)]).reshape(8, 8)
    np.testing.assert_array_equal(mirror(errors(half_plane(8)), 8), everywhere)
    assert len(np.unique(everywhere)) > 3  # the map says something


# --- heat map --------------------------------------------------------------------------------------

def projection_heads(u, counter=None):
    """Heads that read the coefficient p of channel 0 along u: "abs" says class 1 iff |p| > 1,
    "abs_again" is the same function, "pos" says 1 iff p > 0, "neg" says 1 iff p < 0."""
    def heads(x):
        if counter is not None:
            counter.append(len(x))
        p = projection(x, u)
        return {"abs": as_logits(p.abs() > 1), "abs_again": as_logits(p.abs() > 1),
                "pos": as_logits(p > 0), "neg": as_logits(p < 0)}
    return heads


def test_heatmap_equals_the_closed_form_of_a_linear_model():
    """Images 128 + a U_q with a = 0 (label 0) or a = 6 (label 1), eps = 2. Basis images of
    different pairs are orthogonal, so only at q and its conjugate does the coefficient move, by
    +-2: every a = 0 image becomes |p| = 2 > 1, misclassified, and every a = 6 image stays > 1."""
    q = (13, 20)
    u = basis(32, *q)
    amplitudes = [0.0] * 12 + [6.0] * 8
    x, y = images_along(u, amplitudes), torch.tensor([0] * 12 + [1] * 8)
    calls = []
    maps = heatmap(projection_heads(u, calls), x, y, MEAN, STD, eps=2.0, batch_size=1000,
                   generator=torch.Generator().manual_seed(1))
    expected = np.zeros((32, 32))
    expected[q] = expected[conjugate(32, *q)] = 12 / 20
    np.testing.assert_array_equal(maps["abs"], expected)
    # Same perturbed batch for every head: a copy of a head gives the same map, and at q each
    # a = 0 image fools exactly one of "pos" / "neg" (by the sign of its r), each a = 6 image
    # fools "neg" only, so their errors add up to exactly 1.
    np.testing.assert_array_equal(maps["abs_again"], maps["abs"])
    assert maps["pos"][q] + maps["neg"][q] == 1
    assert 0 < maps["pos"][q] < 12 / 20
    # heads runs once per forward pass of at most batch_size images: 514 * 20 = 10 * 1000 + 280
    assert calls == [1000] * 10 + [280]


def test_signs_are_random_per_image_and_per_channel_and_seeded():
    """All images flat (a = 0), label 0; at q the coefficient of channel c is eps * r_c. "pos"
    errs where r_0 = +1, "agree" (class 1 iff r_0 and r_1 agree) where the channels agree: each
    about half of 400 images if r is drawn per image and per channel."""
    q = (2, 5)
    u = basis(8, *q)

    def heads(x):
        p0, p1 = projection(x, u, 0), projection(x, u, 1)
        return {"pos": as_logits(p0 > 0), "agree": as_logits((p0 > 0) == (p1 > 0))}

    x = images_along(u, np.zeros(400))
    y = torch.zeros(400, dtype=torch.long)
    maps = heatmap(heads, x, y, MEAN, STD, eps=1.0, generator=torch.Generator().manual_seed(0))
    assert 0.4 < maps["pos"][q] < 0.6 and 0.4 < maps["agree"][q] < 0.6
    again = heatmap(heads, x, y, MEAN, STD, eps=1.0, batch_size=7,
                    generator=torch.Generator().manual_seed(0))
    for name in maps:  # same seed: same map, whatever the batch size
        np.testing.assert_array_equal(again[name], maps[name])
    other = heatmap(heads, x, y, MEAN, STD, eps=1.0, generator=torch.Generator().manual_seed(1))
    assert other["pos"][q] != maps["pos"][q]


def test_zero_eps_gives_the_clean_error_of_normalized_images_everywhere():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10).eval()
    heads = lambda x: {"cnn": model(x)}
    x = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (30,))
    with torch.no_grad():
        clean = (model(normalize(x, MEAN, STD)).argmax(1) != y).double().mean().item()
    maps = heatmap(heads, x, y, MEAN, STD, eps=0.0, batch_size=30)
    np.testing.assert_array_equal(maps["cnn"], np.full((8, 8), clean))


def test_a_centred_window_is_the_centre_of_the_full_map():
    q = (14, 17)  # inside the central 7x7 of 32x32 (rows and columns 13..19)
    u = basis(32, *q)
    x, y = images_along(u, [0.0, 0.0, 6.0]), torch.tensor([0, 0, 1])
    full = heatmap(projection_heads(u), x, y, MEAN, STD, eps=2.0)["abs"]
    window = heatmap(projection_heads(u), x, y, MEAN, STD, eps=2.0, size=7)["abs"]
    np.testing.assert_array_equal(window, full[13:20, 13:20])
    assert window[1, 4] == 2 / 3


def test_perturbed_and_filtered_images_are_clipped_to_the_unit_range():
    """Black-and-white images: every perturbation and every low-pass filter but the identity push
    pixels outside [0, 1]; a head that flags such pixels must never fire."""
    def heads(x):
        x01 = unnormalize(x)
        return {"outside": as_logits(((x01 < -1e-5) | (x01 > 1 + 1e-5)).flatten(1).any(1))}

    x = torch.randint(0, 2, (6, 3, 8, 8), dtype=torch.uint8) * 255
    y = torch.zeros(6, dtype=torch.long)
    np.testing.assert_array_equal(heatmap(heads, x, y, MEAN, STD, eps=1.0)["outside"], 0)
    np.testing.assert_array_equal(lowpass_accuracy(heads, x, y, MEAN, STD)["outside"], 1)
    assert (lowpass(x.float() / 255, 4) > 1.01).any()


def test_bad_arguments_say_what_is_valid():
    x, y = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="odd number"):
        heatmap(lambda x: {}, x, y, MEAN, STD, size=4)
    with pytest.raises(ValueError, match="uint8"):
        heatmap(lambda x: {}, x.float(), y, MEAN, STD)
    with pytest.raises(ValueError, match="one value per half-plane position"):
        mirror(np.zeros(10), 8)
    with pytest.raises(ValueError, match="1..8"):
        lowpass(torch.zeros(1, 1, 8, 8), 9)


# --- low-pass filter -------------------------------------------------------------------------------

def test_lowpass_full_width_is_identity_and_width_one_is_the_mean():
    x = torch.rand(4, 3, 32, 32)
    out = lowpass(x, 32)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    mean = x.mean((-2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(lowpass(x, 1), mean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [7, 8])
def test_lowpass_keeps_the_centred_frequencies_as_numpy_computes_them(size):
    """In numpy's own frequency layout: the output spectrum is X(f) where f and -f are both kept,
    X(f) / 2 where only one of them is (even widths: Re halves an unpaired component), else 0.
    Kept along an axis: frequencies -(w // 2) .. w - 1 - w // 2."""
    x = torch.rand(3, 2, size, size, dtype=torch.float64)
    spectrum = np.fft.fft2(x.numpy())
    f = np.fft.fftfreq(size, 1 / size).round().astype(int)
    minus_f = (-f + size // 2) % size - size // 2
    for width in range(1, size + 1):
        low, high = -(width // 2), width - 1 - width // 2
        kept = (low <= f) & (f <= high)
        kept_minus = (low <= minus_f) & (minus_f <= high)
        weight = (np.outer(kept, kept).astype(float) + np.outer(kept_minus, kept_minus)) / 2
        out = lowpass(x, width)
        assert not out.is_complex()
        np.testing.assert_allclose(np.fft.fft2(out.numpy()), spectrum * weight, atol=1e-10)


def test_lowpass_width_two_on_32_keeps_frequencies_minus_one_and_zero():
    u_minus1 = basis(32, 15, 16)  # vertical frequency -1 (pair with +1 at row 17)
    x = torch.from_numpy(np.stack([u_minus1, basis(32, 18, 16)]))[:, None]
    proj = (lowpass(x, 2)[:, 0] * x[:, 0]).sum((-2, -1))
    np.testing.assert_allclose(proj.numpy(), [0.5, 0.0], atol=1e-12)  # half of the +-1 pair; no +-2


def test_lowpass_accuracy_equals_the_closed_form():
    """Images 128 + a U with U at vertical frequency +-2, a = +3 (label 1) or -3 (label 0); the
    coefficient after filtering is a (both +-2 kept: widths >= 5), a / 2 (only -2 kept: width 4)
    or 0 (widths 1-3). "strict" says class 1 iff it exceeds 2.25, "loose" iff it exceeds 0.75."""
    u = basis(32, 18, 16)
    x = images_along(u, [3.0] * 5 + [-3.0] * 5)
    y = torch.tensor([1] * 5 + [0] * 5)
    calls = []

    def heads(x):
        calls.append(len(x))
        p = projection(x, u)
        return {"strict": as_logits(p > 2.25), "loose": as_logits(p > 0.75)}

    acc = lowpass_accuracy(heads, x, y, MEAN, STD, batch_size=4)
    np.testing.assert_array_equal(acc["strict"], [0.5] * 4 + [1.0] * 28)
    np.testing.assert_array_equal(acc["loose"], [0.5] * 3 + [1.0] * 29)
    assert calls == [4] * 32 + [4] * 32 + [2] * 32  # heads once per batch and width
    acc = lowpass_accuracy(heads, x, y, MEAN, STD, widths=[4, 32])
    np.testing.assert_array_equal(acc["strict"], [0.5, 1.0])
    assert acc["loose"][0] == 1.0
