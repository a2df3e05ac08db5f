"""Tests for searchlab.analysis.cka against closed forms and a textbook numpy implementation."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from searchlab.analysis.cka import (
    MinibatchCKA,
    capture,
    cka,
    cka_impact,
    cka_matrix,
    gram_linear,
    gram_rbf,
    grams,
    hsic_biased,
    hsic_unbiased,
    layer_depths,
)
from searchlab.data import load_dataset, normalize
from searchlab.models import build_model, conv_layers

# --- the textbook formulas, written out in numpy --------------------------------------


def np_hsic_biased(K, L):
    """Gretton et al. 2005: tr(K H L H) / (n-1)^2 with H = I - 11^T/n."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def np_hsic_unbiased(K, L):
    """Song et al. 2012, eq. (5), with K~, L~ the grams with zeroed diagonals."""
    n = len(K)
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    return (np.trace(Kt @ Lt)
            + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ Kt @ Lt @ one)) / (n * (n - 3))


def np_cka(K, L, unbiased):
    h = np_hsic_unbiased if unbiased else np_hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def np_gram_linear(X):
    return X @ X.T


def np_gram_rbf(X, frac=0.5):
    """sigma = frac * the median distance between distinct examples (rbf_median="distinct_pairs")."""
    dist = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    sigma = frac * np.median(dist[np.triu_indices(len(X), 1)])
    return np.exp(-dist**2 / (2 * sigma**2))


def np_gram_rbf_kornblith(x, threshold=0.5):
    """``gram_rbf`` of Kornblith et al.'s reference code (google-research/representation_similarity,
    Demo.ipynb), line for line: the median is over all n^2 squared distances, zeros included."""
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


GRAMS = {"linear": gram_linear, "rbf": gram_rbf}


def related_features(seed, n=60, p=15, q=12):
    """X and a noisy nonlinear function Y of it (CKA clearly between 0 and 1), with nonzero means
    so that centring is exercised."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + 2.0
    Y = (X[:, :4] @ rng.normal(size=(4, q)) + np.tanh(X[:, 4:8] @ rng.normal(size=(4, q)))
         + 2 * rng.normal(size=(n, q)) + 1.0)
    return X, Y


# --- CKA on feature matrices ----------------------------------------------------------


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_self_cka_is_one(kernel, unbiased):
    X, Y = related_features(0)
    K = GRAMS[kernel](X)
    assert cka(K, K, unbiased) == pytest.approx(1.0, abs=1e-12)
    assert cka(K, GRAMS[kernel](Y), unbiased) < 0.95  # not 1 for everything


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(kernel, unbiased):
    X, Y = related_features(1)
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.normal(size=(X.shape[1], X.shape[1])))
    R, _ = np.linalg.qr(rng.normal(size=(Y.shape[1], Y.shape[1])))
    gram = GRAMS[kernel]
    base = cka(gram(X), gram(Y), unbiased)
    assert 0.1 < base < 0.95
    assert cka(gram(X @ Q), gram(Y), unbiased) == pytest.approx(base, rel=1e-10)
    assert cka(gram(5.3 * X), gram(Y), unbiased) == pytest.approx(base, rel=1e-10)
    assert cka(gram(X @ Q * 0.02), gram(Y @ R * 40), unbiased) == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_is_not_invariant_to_general_invertible_maps(unbiased):
    X, Y = related_features(1)
    p = X.shape[1]
    V, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(p, p)))
    # Invertible (condition number 100), but it shrinks the 4 directions Y depends on linearly.
    A = np.diag([1e-2] * 4 + [1.0] * (p - 4)) @ V
    assert np.linalg.cond(A) == pytest.approx(100, rel=1e-6)
    base = cka(gram_linear(X), gram_linear(Y), unbiased)
    assert base - cka(gram_linear(X @ A), gram_linear(Y), unbiased) > 0.2


@pytest.mark.parametrize("n", [4, 7, 40])
def test_matches_textbook_numpy(n):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 9)) + 3.0
    Y = X[:, :4] ** 2 + rng.normal(size=(n, 4))
    for K, L in [(np_gram_linear(X), np_gram_linear(Y)), (np_gram_rbf(X), np_gram_rbf(Y, 0.8))]:
        assert hsic_unbiased(K, L) == pytest.approx(np_hsic_unbiased(K, L), rel=1e-10)
        assert hsic_biased(K, L) == pytest.approx(np_hsic_biased(K, L), rel=1e-10)
        for unbiased in (False, True):
            assert cka(K, L, unbiased) == pytest.approx(np_cka(K, L, unbiased), rel=1e-10)
    np.testing.assert_allclose(gram_linear(X).numpy(), np_gram_linear(X), rtol=1e-12)
    np.testing.assert_allclose(gram_rbf(X).numpy(), np_gram_rbf_kornblith(X), rtol=1e-12)
    np.testing.assert_allclose(gram_rbf(Y, sigma_frac=0.8).numpy(), np_gram_rbf_kornblith(Y, 0.8), rtol=1e-12)
    np.testing.assert_allclose(gram_rbf(X, rbf_median="distinct_pairs").numpy(), np_gram_rbf(X), rtol=1e-12)
    np.testing.assert_allclose(gram_rbf(Y, sigma_frac=0.8, rbf_median="distinct_pairs").numpy(),
                               np_gram_rbf(Y, 0.8), rtol=1e-12)


def kornblith_demo_data():
    """The data of Kornblith et al.'s Demo.ipynb (google-research/representation_similarity)."""
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def test_reference_notebook_values():
    # The numbers printed by the reference notebook: linear CKA 0.55761, RBF CKA (threshold 0.5)
    # 0.65483, debiased linear CKA 0.51346.
    X, Y = kornblith_demo_data()
    assert round(cka(gram_linear(X), gram_linear(Y)), 5) == 0.55761
    assert round(cka(gram_rbf(X, 0.5), gram_rbf(Y, 0.5)), 5) == 0.65483
    assert round(cka(gram_linear(X), gram_linear(Y), unbiased=True), 5) == 0.51346
    want = np_cka(np_gram_rbf_kornblith(X), np_gram_rbf_kornblith(Y), unbiased=False)
    assert cka(gram_rbf(X, 0.5), gram_rbf(Y, 0.5)) == pytest.approx(want, rel=1e-10)


def test_rbf_median_over_distinct_pairs_is_still_available():
    X, Y = kornblith_demo_data()
    old = cka(gram_rbf(X, 0.5, rbf_median="distinct_pairs"), gram_rbf(Y, 0.5, rbf_median="distinct_pairs"))
    assert old == pytest.approx(np_cka(np_gram_rbf(X), np_gram_rbf(Y), unbiased=False), rel=1e-10)
    # Leaving out the zero self-distances raises sigma, which moves CKA in the 4th digit here.
    assert abs(old - cka(gram_rbf(X, 0.5), gram_rbf(Y, 0.5))) > 5e-4
    with pytest.raises(ValueError, match="valid: kornblith, distinct_pairs"):
        gram_rbf(X, rbf_median="distinct")


@pytest.mark.parametrize("unbiased", [False, True])
def test_minibatch_terms_of_one_batch_are_the_full_batch_values(unbiased):
    rng = np.random.default_rng(4)
    feats_a = [rng.normal(size=(30, d)) + 1 for d in (5, 8, 3)]
    feats_b = [rng.normal(size=(30, 4)) @ rng.normal(size=(4, d)) for d in (6, 2)]
    feats_b[0] += feats_a[0][:, :1]  # one related pair
    Ka = [np_gram_linear(f) for f in feats_a]
    Lb = [np_gram_linear(f) for f in feats_b]
    acc = MinibatchCKA(unbiased)
    acc.update(torch.tensor(np.stack(Ka)), torch.tensor(np.stack(Lb)))
    h = np_hsic_unbiased if unbiased else np_hsic_biased
    want_cross = np.array([[h(K, L) for L in Lb] for K in Ka])
    np.testing.assert_allclose(acc.cross.numpy(), want_cross, rtol=1e-12)
    np.testing.assert_allclose(acc.self_a.numpy(), [h(K, K) for K in Ka], rtol=1e-12)
    np.testing.assert_allclose(acc.self_b.numpy(), [h(L, L) for L in Lb], rtol=1e-12)
    want_cka = np.array([[np_cka(K, L, unbiased) for L in Lb] for K in Ka])
    np.testing.assert_allclose(acc.cka(), want_cka, rtol=1e-10)


def minibatch_over_random_splits(K, L, batch, splits, unbiased):
    """Per random partition into batches: (mean per-batch HSIC(K, L), minibatch CKA)."""
    rng = np.random.default_rng(5)
    hsic, ckas = [], []
    for _ in range(splits):
        order = rng.permutation(len(K))
        acc = MinibatchCKA(unbiased)
        for start in range(0, len(K), batch):
            idx = torch.from_numpy(order[start:start + batch])
            acc.update(K[idx][:, idx][None], L[idx][:, idx][None])
        hsic.append(float(acc.cross[0, 0]) / acc.batches)
        ckas.append(float(acc.cka()[0, 0]))
    return np.mean(hsic), np.mean(ckas)


def test_minibatch_unbiased_estimator_matches_full_batch_in_expectation():
    # A U-statistic on a random subset has the full set's value as its expectation, so the mean of
    # per-batch unbiased HSIC over random splits estimates the full-batch unbiased HSIC. Standard
    # errors at these sizes (measured): 1.1% for HSIC, 0.003 for CKA; tolerances are ~4 of them.
    rng = np.random.default_rng(6)
    X = rng.normal(size=(240, 20))
    Y = np.tanh(X[:, :5] @ rng.normal(size=(5, 30))) + rng.normal(size=(240, 30))
    K, L = gram_linear(X), gram_linear(Y)
    hsic, mb_cka = minibatch_over_random_splits(K, L, batch=24, splits=40, unbiased=True)
    assert hsic == pytest.approx(hsic_unbiased(K, L), rel=0.04)
    assert mb_cka == pytest.approx(cka(K, L, unbiased=True), abs=0.012)
    # The biased estimator on the same minibatches is far off: the reason for the default.
    _, biased_cka = minibatch_over_random_splits(K, L, batch=24, splits=5, unbiased=False)
    assert biased_cka - cka(K, L, unbiased=False) > 0.1


def test_negative_unbiased_values_are_not_clamped():
    # Independent features on few examples: the unbiased estimate is negative about half the time.
    for seed in range(100):
        rng = np.random.default_rng(seed)
        K, L = np_gram_linear(rng.normal(size=(8, 3))), np_gram_linear(rng.normal(size=(8, 3)))
        if np_hsic_unbiased(K, L) < -1e-3:
            break
    assert hsic_unbiased(K, L) == pytest.approx(np_hsic_unbiased(K, L), rel=1e-10)
    assert cka(K, L, unbiased=True) == pytest.approx(np_cka(K, L, True), rel=1e-10)
    assert cka(K, L, unbiased=True) < 0
    acc = MinibatchCKA(unbiased=True)
    acc.update(torch.tensor(K)[None], torch.tensor(L)[None])
    assert acc.cka()[0, 0] == pytest.approx(np_cka(K, L, True), rel=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_tiny_features_give_the_same_cka(kernel, unbiased):
    # Any epsilon in a denominator would dominate HSIC values of order 1e-48 here.
    X, Y = related_features(7)
    gram = GRAMS[kernel]
    assert cka(gram(1e-12 * X), gram(Y), unbiased) == pytest.approx(cka(gram(X), gram(Y), unbiased), rel=1e-10)
    acc = MinibatchCKA(unbiased)
    acc.update(gram(1e-12 * X)[None], gram(1e-12 * Y)[None])
    assert acc.cka()[0, 0] == pytest.approx(cka(gram(X), gram(Y), unbiased), rel=1e-10)


def test_zero_self_hsic_gives_nan():
    X, _ = related_features(8)
    K, zero = gram_linear(X), gram_linear(np.zeros((len(X), 4)))
    assert np.isnan(cka(K, zero)) and np.isnan(cka(zero, K, unbiased=True))
    # A dead conv layer (all-zero output) in cka_matrix.
    torch.manual_seed(0)
    model_a, model_b = nn.Sequential(nn.Conv2d(3, 2, 3)), nn.Sequential(nn.Conv2d(3, 2, 3))
    with torch.no_grad():
        model_b[0].weight.zero_()
        model_b[0].bias.zero_()
    loader = [(torch.randn(8, 3, 6, 6), None) for _ in range(2)]
    for unbiased in (False, True):
        M, _, _ = cka_matrix(model_a, model_b, loader, unbiased=unbiased)
        assert M.shape == (1, 1) and np.isnan(M[0, 0])


def test_errors_name_the_problem():
    K = gram_linear(np.eye(3))
    with pytest.raises(ValueError, match="at least 4"):
        hsic_unbiased(K, K)
    with pytest.raises(ValueError, match="same size"):
        cka(K, gram_linear(np.eye(5)))
    with pytest.raises(ValueError, match="valid kernels: linear, rbf"):
        grams(nn.Conv2d(1, 1, 1), torch.zeros(4, 1, 2, 2), kernel="cosine")


# --- feature capture ---------------------------------------------------------------------


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_capture_is_taken_before_an_inplace_relu():
    torch.manual_seed(0)
    # float64, so that no dtype conversion happens to copy the output by accident.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3)).double()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        want = model[0](x).flatten(1)
    assert (want < 0).any()  # the in-place ReLU would change these
    feats = capture(model, x)
    torch.testing.assert_close(feats[0], want, rtol=0, atol=0)
    torch.testing.assert_close(grams(model, x)[0], want @ want.T, rtol=1e-12, atol=0)
    # Channels-last outputs are read in memory order for the gram; the gram must not change.
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grams(model, x_cl)[0], want @ want.T, rtol=1e-12, atol=1e-12)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("channels, kernel", [(6, 3), (5, 4)])
@pytest.mark.parametrize("n", [128, 131, 200, 256])
def test_grams_of_large_batches_match_the_plain_product(n, channels, kernel, threads, restore_threads):
    # Even batches of 128 or more take the blocked product that computes each symmetric block once
    # (one level of blocks for 128 and 200, two for 256); odd ones a single product. An even
    # number of features (6 x 4 x 4 = 96) is split in halves, an odd one (5 x 3 x 3 = 45) is not.
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, kernel)).double()
    x = torch.randn(n, 3, 6, 6, dtype=torch.float64) + 0.5
    with torch.no_grad():
        want = model[0](x).flatten(1).numpy()
    G = grams(model, x.contiguous(memory_format=torch.channels_last))[0]
    # Absolute slack at rounding level of the largest entry, for entries that nearly cancel.
    np.testing.assert_allclose(G.numpy(), want @ want.T, rtol=1e-12, atol=1e-13 * np.abs(want @ want.T).max())


def test_capture_on_torchvision_resnet18_matches_each_conv_on_its_input():
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    model.train()
    model.layer1[0].bn1.eval()  # a deliberately frozen module must stay frozen
    layers = conv_layers(model)
    x = torch.randn(2, 3, 32, 32)

    inputs = {}

    def keep_input(module, args):
        # The last call wins: capture's own conv_layers() runs a dummy forward pass first.
        inputs[module] = args[0].detach().clone()

    handles = [m.register_forward_pre_hook(keep_input) for _, m in layers]
    try:
        feats = capture(model, x)
    finally:
        for h in handles:
            h.remove()

    assert len(feats) == len(layers) == 20
    model.eval()
    with torch.no_grad():
        for (name, conv), feat in zip(layers, feats):
            want = conv(inputs[conv]).flatten(1).double()
            torch.testing.assert_close(feat, want, rtol=1e-6, atol=1e-6, msg=name)
            assert feat.dtype == torch.float64 and not feat.requires_grad and feat.grad_fn is None
    model.train()
    model.layer1[0].bn1.eval()
    feats = capture(model, x)  # second run: state after the first must be as before
    assert model.training and model.layer1[1].bn2.training and not model.layer1[0].bn1.training
    assert no_hooks(model)
    G = grams(model, x)
    assert G.shape == (20, 2, 2) and G.dtype == torch.float64 and not G.requires_grad
    assert model.training and no_hooks(model)


class FailsAfterConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        self.bn(self.conv(x))
        raise RuntimeError("boom")


def test_hooks_removed_and_modes_restored_after_an_exception():
    model = FailsAfterConv().train()
    for fn in (capture, grams):
        with pytest.raises(RuntimeError, match="boom"):
            fn(model, torch.zeros(4, 1, 5, 5), layers=[("conv", model.conv)])
        assert no_hooks(model)
        assert model.training and model.bn.training


class ConvTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.unused = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv(self.conv(x) * 2 + 1)


def test_a_module_called_twice_keeps_its_first_call():
    torch.manual_seed(0)
    model = ConvTwice()
    x = torch.randn(6, 2, 4, 4)
    with torch.no_grad():
        first = model.conv(x).flatten(1).double()
    (feat,) = capture(model, x, layers=[model.conv])
    torch.testing.assert_close(feat, first, rtol=0, atol=0)
    # A float32 network's gram is formed in float32 (cka._gram), hence the float32-sized tolerance.
    torch.testing.assert_close(grams(model, x, layers=[model.conv])[0], first @ first.T, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not called in the forward pass: unused"):
        capture(model, x, layers=[model.conv, model.unused])
    assert no_hooks(model)


def test_layer_depths():
    np.testing.assert_array_equal(layer_depths(5), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(layer_depths(1), [0])
    assert len(layer_depths(0)) == 0


def test_cka_impact():
    ref, aug1, aug2 = [0.8, 0.5, 0.9], [0.8, 0.25, 0.9], [0.6, 0.25, 0.9]
    want = [(0.8 - 0.7) / 0.8, (0.5 - 0.25) / 0.5, 0.0]
    np.testing.assert_allclose(cka_impact(ref, aug1, aug2), want, rtol=1e-15)
    # Square CKA matrices: only layer i vs layer i counts.
    rng = np.random.default_rng(9)
    mats = [np.diag(v) + np.triu(rng.random((3, 3)), 1) for v in (ref, aug1, aug2)]
    np.testing.assert_allclose(cka_impact(*mats), want, rtol=1e-15)
    with pytest.raises(ValueError, match="differ in length"):
        cka_impact(ref, aug1, aug2[:2])


# --- CKA between networks on CIFAR-10 ------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_val(cifar_data):
    ds = load_dataset("cifar10", val_size=256, train_size=512, test_size=1, root=cifar_data)
    return normalize(ds.val.x, ds.mean, ds.std)


def fixed_batches(x, size=64):
    return [(x[i:i + size], None) for i in range(0, len(x), size)]


def np_minibatch_cka(model_a, model_b, loader, i, j, unbiased=True, gram=np_gram_linear):
    """CKA of layer i of model_a and layer j of model_b from captured features, in numpy."""
    h = np_hsic_unbiased if unbiased else np_hsic_biased
    ab = aa = bb = 0.0
    for x, _ in loader:
        K = gram(capture(model_a, x)[i].numpy())
        L = gram(capture(model_b, x)[j].numpy())
        ab, aa, bb = ab + h(K, L), aa + h(K, K), bb + h(L, L)
    return ab / np.sqrt(aa * bb)


def test_cka_matrix_between_two_resnet20(cifar_val):
    torch.manual_seed(0)
    model_a = build_model("resnet20", 10)
    torch.manual_seed(1)
    model_b = build_model("resnet20", 10)
    loader = fixed_batches(cifar_val)

    M, names_a, names_b = cka_matrix(model_a, model_b, loader)
    assert M.shape == (19, 19) and M.dtype == np.float64
    assert names_a == names_b == [name for name, _ in conv_layers(model_a)]
    for i, j in [(0, 0), (4, 11), (18, 18)]:
        # Grams of float32 networks are formed in float32, the rest in float64: CKA moves ~1e-8.
        assert M[i, j] == pytest.approx(np_minibatch_cka(model_a, model_b, loader, i, j), rel=1e-6)

    S, _, _ = cka_matrix(model_a, model_a, loader)
    np.testing.assert_allclose(np.diagonal(S), 1.0, atol=1e-12)
    np.testing.assert_allclose(S, S.T, atol=1e-12)

    # Model B on the same images in another order: the same images per step is what makes it CKA.
    perm = torch.randperm(len(cifar_val), generator=torch.Generator().manual_seed(0))
    acc = MinibatchCKA(unbiased=True)
    for (xa, _), (xb, _) in zip(loader, fixed_batches(cifar_val[perm])):
        acc.update(grams(model_a, xa), grams(model_b, xb))
    shuffled = acc.cka()
    assert M[0, 0] > 0.5 and abs(shuffled[0, 0]) < 0.1
    assert np.abs(M - shuffled).max() > 0.4


def test_cka_matrix_rbf_kernel(cifar_val):
    torch.manual_seed(0)
    model_a = build_model("small_cnn", 10)
    torch.manual_seed(1)
    model_b = build_model("small_cnn", 10)
    loader = fixed_batches(cifar_val[:128])
    M, _, _ = cka_matrix(model_a, model_b, loader, kernel="rbf")
    assert M.shape == (3, 3)
    assert M[2, 1] == pytest.approx(
        np_minibatch_cka(model_a, model_b, loader, 2, 1, gram=np_gram_rbf_kornblith), rel=1e-6)
    B, _, _ = cka_matrix(model_a, model_b, loader, unbiased=False, kernel="rbf")
    assert B[2, 1] == pytest.approx(
        np_minibatch_cka(model_a, model_b, loader, 2, 1, unbiased=False, gram=np_gram_rbf_kornblith), rel=1e-6)
    # The other bandwidth convention, passed through explicitly.
    M, _, _ = cka_matrix(model_a, model_b, loader, kernel="rbf", rbf_median="distinct_pairs")
    assert M[2, 1] == pytest.approx(np_minibatch_cka(model_a, model_b, loader, 2, 1, gram=np_gram_rbf), rel=1e-6)
    B, _, _ = cka_matrix(model_a, model_b, loader, unbiased=False, kernel="rbf", rbf_median="distinct_pairs")
    assert B[2, 1] == pytest.approx(
        np_minibatch_cka(model_a, model_b, loader, 2, 1, unbiased=False, gram=np_gram_rbf), rel=1e-6)
