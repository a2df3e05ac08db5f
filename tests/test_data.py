import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from sklearn.datasets import load_digits

from searchlab.data import batches, channel_stats, load_dataset, normalize, require
from searchlab.errors import UserError


def test_digits_split_is_seeded_disjoint_and_complete():
    d = load_dataset("digits", val_size=0.1, split_seed=3)
    again = load_dataset("digits", val_size=0.1, split_seed=3)
    other = load_dataset("digits", val_size=0.1, split_seed=4)
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (1, 8, 8)
    total = len(load_digits().target)
    assert len(d.train) + len(d.val) + len(d.test) == total
    assert len(d.val) == round(0.1 * (total - len(d.test)))
    assert torch.equal(d.val.x, again.val.x) and not torch.equal(d.val.x, other.val.x)
    # The test split does not depend on the validation seed.
    assert torch.equal(d.test.x, other.test.x)
    # Every image of the source appears exactly once across the three splits.
    source = {bytes(np.rint(img * 255 / 16).astype(np.uint8)) for img in load_digits().images}
    ours = [bytes(img[0].numpy()) for s in (d.train, d.val, d.test) for img in s.x]
    assert set(ours) == source


def test_cifar10_pixels_labels_and_stats(cifar_data):
    raw_x = np.load(f"{cifar_data}/cifar10/train_x.npy", mmap_mode="r")
    raw_y = np.load(f"{cifar_data}/cifar10/train_y.npy")
    d = load_dataset("cifar10", val_size=0, root=cifar_data)
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 0, 10000)
    # Rows are a permutation of the file; find row 0 of the file by its pixels.
    row = torch.from_numpy(np.array(raw_x[0])).permute(2, 0, 1)
    hits = (d.train.x == row).flatten(1).all(1).nonzero().flatten()
    assert len(hits) == 1 and d.train.y[hits[0]] == raw_y[0]
    # Published CIFAR-10 channel statistics (shared/data/cifar10/README.md).
    np.testing.assert_allclose(d.mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
    np.testing.assert_allclose(d.std, [0.2470, 0.2435, 0.2616], atol=1e-4)


def test_cifar10_subsets_keep_sizes(cifar_data):
    d = load_dataset("cifar10", val_size=500, train_size=1000, test_size=0.05, root=cifar_data)
    assert (len(d.train), len(d.val), len(d.test)) == (1000, 500, 500)
    assert d.train.x.shape == (1000, 3, 32, 32) and d.train.x.dtype == torch.uint8
    assert len(torch.unique(d.train.y)) == 10


def test_channel_stats_match_torch():
    x = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=8)
    scaled = x.double() / 255
    torch.testing.assert_close(mean, scaled.mean((0, 2, 3)).float())
    torch.testing.assert_close(std, scaled.std((0, 2, 3), correction=0).float())


def test_batches_cover_every_image_once_and_replay():
    d = load_dataset("digits")
    seen = torch.cat([y for _, y in batches(d.train, 100)])
    assert torch.equal(seen, d.train.y)
    shuffled = [x for x, _ in batches(d.train, 100, torch.Generator().manual_seed(1))]
    replay = [x for x, _ in batches(d.train, 100, torch.Generator().manual_seed(1))]
    assert all(torch.equal(a, b) for a, b in zip(shuffled, replay))
    flat = torch.cat(shuffled).flatten(1)
    assert not torch.equal(flat, d.train.x.flatten(1))
    # Same multiset of images as the split.
    key = lambda t: sorted(map(bytes, t.numpy()))  # noqa: E731
    assert key(flat) == key(d.train.x.flatten(1))
    dropped = list(batches(d.train, 100, drop_last=True))
    assert len(dropped) == len(d.train) // 100 and all(len(x) == 100 for x, _ in dropped)


def test_normalize_matches_torchvision():
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    expected = torch.stack([TF.normalize(TF.convert_image_dtype(img, torch.float32), mean.tolist(),
                                         std.tolist()) for img in x])
    torch.testing.assert_close(normalize(x, mean, std), expected)


def test_bad_datasets_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown dataset 'mnist'; valid datasets: digits, cifar10, cifar100"):
        load_dataset("mnist")
    with pytest.raises(UserError, match=r"dataset 'cifar10' not found: .* lacks train_x.npy.*searchlab data prepare cifar10"):
        require("cifar10", tmp_path)
    with pytest.raises(UserError, match="data.train_size must be"):
        load_dataset("digits", train_size=10**6)
