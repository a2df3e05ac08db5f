"""Datasets by name, held whole in memory as uint8 tensors, batched by slicing.

Layout on disk (DESIGN.md section 6): ``$SEARCHLAB_DATA/<name>/{train,test}_{x,y}.npy`` with
``*_x`` uint8 (N, H, W, C) and ``*_y`` integer labels. ``digits`` ships with scikit-learn and needs
no download. This module knows nothing of Ray.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from searchlab.errors import UserError

# name -> number of classes; "prepare" is how the numpy layout gets made.
DATASETS = {"digits": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64, on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self):
        return len(self.y)

    def __getitem__(self, rows):
        """The images and labels of ``rows`` (an index, slice or mask), e.g. ``split[:1000]``."""
        return Split(self.x[rows], self.y[rows])

    def to(self, device, non_blocking=False):
        return Split(move(self.x, device, non_blocking), move(self.y, device, non_blocking))


@dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor  # per channel, in [0, 1], from the training split actually used
    std: torch.Tensor

    def to(self, device, non_blocking=False):
        splits = (s.to(device, non_blocking) for s in (self.train, self.val, self.test))
        return Dataset(self.name, self.num_classes, *splits, move(self.mean, device, non_blocking),
                       move(self.std, device, non_blocking))


def move(tensor, device, non_blocking=False):
    """``tensor`` on ``device``. With ``non_blocking`` a copy from the host to a GPU is made from
    pinned (page-locked) memory and queued without waiting for it: the GPU runs it before any later
    work on the same stream, so nothing reads it early. Other copies (on the CPU, or from a GPU to
    the host, which the host could read before it lands) are plain ``to``."""
    device = torch.device(device)
    if non_blocking and device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def data_root(root=None):
    root = root or os.environ.get("SEARCHLAB_DATA")
    if not root:
        raise UserError("SEARCHLAB_DATA is not set: point it at the folder that holds "
                        "<dataset>/train_x.npy (see `searchlab data prepare --help`)")
    return Path(root).expanduser()


def require(name, root=None):
    """The four numpy files of a dataset by name; a one-line UserError if any is missing."""
    if name == "digits":
        return None
    folder = data_root(root) / name
    files = {k: folder / f"{k}.npy" for k in ("train_x", "train_y", "test_x", "test_y")}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"dataset {name!r} not found: {folder} lacks {', '.join(missing)}; "
                        f"run `searchlab data prepare {name}` or set SEARCHLAB_DATA")
    return files


def _load_numpy(name, root):
    files = require(name, root)
    arrays = {k: np.load(p, allow_pickle=False) for k, p in files.items()}  # no code from data files
    for k in ("train_x", "test_x"):
        if arrays[k].dtype != np.uint8 or arrays[k].ndim != 4:
            raise UserError(f"{files[k]} must be uint8 (N, H, W, C), got {arrays[k].dtype} "
                            f"{arrays[k].shape}")
    return arrays


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 grey levels -> 0..255 uint8, one channel; a fixed 20% test split (seed 0), since
    # scikit-learn ships no official one.
    x = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}


def _take(n, total, what):
    if n is None:
        return total
    if isinstance(n, float) and 0 < n < 1:
        return int(round(n * total))
    if isinstance(n, int) and 0 < n <= total:
        return n
    raise UserError(f"{what} must be a count in 1..{total} or a fraction in (0, 1), got {n!r}")


def load_dataset(name, val_size=0.1, train_size=None, test_size=None, split_seed=0, root=None):
    """Load a dataset by name with a seeded validation split carved from the training set.

    ``val_size``, ``train_size`` and ``test_size`` are counts or fractions; subsets are taken
    after a seeded shuffle so that they keep every class (in expectation).
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    arrays = _load_digits() if name == "digits" else _load_numpy(name, root)

    def split(x, y):
        return Split(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                     torch.from_numpy(y.astype(np.int64)))

    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(arrays["train_y"]))
    n_val = _take(val_size, len(order) - 1, "data.val_size") if val_size else 0
    n_train = _take(train_size, len(order) - n_val, "data.train_size")
    val_idx, train_idx = order[:n_val], order[n_val:n_val + n_train]
    test_order = rng.permutation(len(arrays["test_y"]))
    test_idx = np.sort(test_order[:_take(test_size, len(test_order), "data.test_size")])

    train = split(arrays["train_x"][train_idx], arrays["train_y"][train_idx])
    mean, std = channel_stats(train.x)
    return Dataset(
        name=name,
        num_classes=DATASETS[name],
        train=train,
        val=split(arrays["train_x"][val_idx], arrays["train_y"][val_idx]),
        test=split(arrays["test_x"][test_idx], arrays["test_y"][test_idx]),
        mean=mean,
        std=std,
    )


def channel_stats(x_uint8, chunk=4096):
    """Per-channel mean and std of uint8 images scaled to [0, 1], in float64 chunks (a float copy
    of all of CIFAR-10 at once would take a gigabyte)."""
    total = torch.zeros(x_uint8.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x_uint8), chunk):
        part = x_uint8[start:start + chunk].double().div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x_uint8.numel() / x_uint8.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


def batches(split, batch_size, generator=None, drop_last=False):
    """Yield (x, y) batches by slicing; shuffled when a generator is given.

    The shuffle permutation is drawn from ``generator`` on the data's device, so a seeded generator
    replays the same order.
    """
    n = len(split)
    if generator is not None:
        order = torch.randperm(n, generator=generator, device=generator.device)
        order = order.to(split.x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if generator is None:
            yield split.x[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield split.x[idx], split.y[idx]


def normalize(x_uint8, mean, std):
    """uint8 (N, C, H, W) -> float, per-channel standardised, in channels-last memory layout.

    Convolutions run faster on channels-last input (oneDNN on CPU: about 1.3x for ResNet-20 here;
    cuDNN with mixed precision), and giving every batch the same layout keeps epoch times
    comparable between augmentation pipelines.
    """
    x = x_uint8.contiguous(memory_format=torch.channels_last).float().div_(255)
    return (x - mean[:, None, None]) / std[:, None, None]


def prepare(name, root=None):
    """Write the numpy layout of ``name`` under the data root with torchvision's downloader."""
    if name not in ("cifar10", "cifar100"):
        raise UserError(f"cannot prepare {name!r}; preparable datasets: cifar10, cifar100 "
                        "(digits ships with scikit-learn)")
    import tempfile

    import torchvision

    folder = data_root(root) / name
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sets = {part: cls(tmp, train=part == "train", download=True) for part in ("train", "test")}
        except Exception as e:  # URLError, socket errors, HTTP errors: all mean "no download"
            raise UserError(f"could not download {name} ({type(e).__name__}: {e}); on a machine "
                            f"without internet copy the four .npy files into {folder}") from e
        folder.mkdir(parents=True, exist_ok=True)
        for part, ds in sets.items():
            np.save(folder / f"{part}_x.npy", np.asarray(ds.data, dtype=np.uint8))
            np.save(folder / f"{part}_y.npy", np.asarray(ds.targets, dtype=np.int64))
    return folder
