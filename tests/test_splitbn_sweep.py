"""The split-BN study end to end: a real sweep of the bundled space at test size writes every figure
and table, and every trial reports every lambda."""
import os
import shutil
from pathlib import Path

import numpy as np

from searchlab import checkpoint, cli, corruptions, sweep

SPACE = Path(__file__).parent / "spaces" / "splitbn_tiny.py"
PARETO = Path(__file__).parent / "spaces" / "splitbn_pareto_tiny.py"


def corrupted_root(tmp_path, cifar_data, per_severity=8):
    """A data root with the real CIFAR-10 and a small CIFAR-10-C of its first test images."""
    import torch

    root = tmp_path / "data"
    (root / "cifar10-c").mkdir(parents=True)
    os.symlink(Path(cifar_data) / "cifar10", root / "cifar10")
    test_x = np.load(root / "cifar10" / "test_x.npy")[:per_severity]
    test_y = np.load(root / "cifar10" / "test_y.npy")[:per_severity]
    x = torch.from_numpy(test_x).permute(0, 3, 1, 2)
    for name, corrupt in corruptions.CORRUPTIONS.items():
        views = [corrupt(x, s, torch.Generator().manual_seed(s)).permute(0, 2, 3, 1).numpy() for s in range(1, 6)]
        np.save(root / "cifar10-c" / f"{name}.npy", np.concatenate(views))
    np.save(root / "cifar10-c" / "labels.npy", np.tile(test_y, 5))
    return root


def test_the_splitbn_space_writes_every_figure_and_table(tmp_path, cifar_data, ray_session):
    root = corrupted_root(tmp_path, cifar_data)
    experiment = sweep.run(str(SPACE), {"root": str(root)}, name="splitbn", storage=str(tmp_path / "results"))
    records = {}
    for trial_dir in sorted(Path(experiment).glob("train_*")):
        folder = checkpoint.newest(trial_dir)
        record = checkpoint.read_record(folder)
        records[record["config"]["label"]] = (record["metrics"], checkpoint.read_arrays(folder))
    assert set(records) == {"randaugment", "splitbn"}
    split_metrics, split_arrays = records["splitbn"]
    plain_metrics, plain_arrays = records["randaugment"]
    for lam in ("0", "0.25", "0.5", "0.75", "1"):
        for name in ("val_acc", "test_acc_at_best", "uce_at_best", "uce_fog_at_best", "fourier_err_at_best"):
            metric = name.replace("_at_best", f"@lam{lam}_at_best") if name.endswith("_at_best") else f"{name}@lam{lam}"
            assert 0 <= split_metrics[metric] <= 1, metric
        assert split_arrays[f"fourier@lam{lam}_at_best"].shape == (32, 32)
        assert split_arrays[f"lowpass_acc@lam{lam}_at_best"].shape == (32,)
    # The trial's own lambda (0 by default) gives the plain names; the plain model has only those.
    assert split_metrics["uce_at_best"] == split_metrics["uce@lam0_at_best"]
    assert not any("@lam" in k for k in plain_metrics) and "uce_at_best" in plain_metrics
    assert set(plain_arrays) == {"fourier_at_best", "lowpass_acc_at_best"}
    figures = Path(experiment) / "figures"
    for name in ("lambda.png", "lowpass.png", "fourier_splitbn.png", "fourier_randaugment.png",
                 "table.md", "table.csv"):
        assert (figures / name).stat().st_size > 100, name
    table = (figures / "table.md").read_text()
    assert "splitbn" in table and "randaugment" in table

    # `searchlab figures` draws them again from the experiment alone.
    shutil.rmtree(figures)
    assert cli.main(["figures", str(experiment)]) == 0
    assert (figures / "lambda.png").is_file() and (figures / "table.csv").is_file()


def test_the_pareto_space_searches_two_objectives_and_draws_their_front(tmp_path, cifar_data, ray_session):
    import csv

    root = corrupted_root(tmp_path, cifar_data)
    experiment = sweep.run(str(PARETO), {"root": str(root)}, name="pareto", storage=str(tmp_path / "results"))
    points = {}
    for trial_dir in sorted(Path(experiment).glob("train_*")):
        record = checkpoint.read_record(checkpoint.newest(trial_dir))
        config, metrics = record["config"], record["metrics"]
        # The searcher's raw suggestions went into the aux pipeline's RandAugment op.
        op = config["splitbn"]["aux"][-1]
        assert (op["n"], op["m"]) == (config["search"]["aux_n"], config["search"]["aux_m"])
        points[trial_dir.name] = (metrics["best_val_acc"], metrics["uce_at_best"])
    assert len(points) == 3
    # The front: trials that no other trial beats on both objectives (higher accuracy, lower uCE).
    front = {name for name, (acc, uce) in points.items()
             if not any(a >= acc and u <= uce and (a, u) != (acc, uce) for a, u in points.values())}
    with open(Path(experiment) / "figures" / "pareto.csv") as f:
        assert {row["trial"] for row in csv.DictReader(f)} == front
    assert (Path(experiment) / "figures" / "pareto.png").stat().st_size > 1000
