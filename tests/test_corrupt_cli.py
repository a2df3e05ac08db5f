"""`searchlab data corrupt`: writes the corruption files of a dataset's test split; a missing
dataset is a one-line error and a non-zero exit."""
import numpy as np

from searchlab.cli import main
from searchlab.corruptions import CORRUPTIONS


def test_data_corrupt_writes_the_files(tmp_path, capsys):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for part in ("train", "test"):
        np.save(folder / f"{part}_x.npy", x)
        np.save(folder / f"{part}_y.npy", np.arange(6) % 10)
    rc = main(["data", "corrupt", "cifar10", "--root", str(tmp_path), "--seed", "1", "--severities", "1", "3"])
    out = tmp_path / "cifar10-c"
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    for name in CORRUPTIONS:
        assert np.load(out / f"{name}.npy").shape == (12, 32, 32, 3), name
    assert np.array_equal(np.load(out / "labels.npy"), np.tile(np.arange(6, dtype=np.uint8), 2))


def test_data_corrupt_without_the_dataset_is_one_line_and_non_zero(tmp_path, capsys):
    rc = main(["data", "corrupt", "cifar10", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "dataset 'cifar10' not found" in err and "searchlab data prepare cifar10" in err
