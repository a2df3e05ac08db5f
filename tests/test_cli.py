"""Bad input on the command line: one line naming the problem and the valid choices, exit 2."""
import subprocess
import sys

import pytest
import torch

from searchlab.cli import parse_args_kv


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "searchlab.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("searchlab: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["sweep", "nope"], "unknown search space 'nope'; valid search spaces: augmentations, baseline, cka_study, optuna_lr_wd, quickstart"),
    (["sweep", "baseline", "--arg", "smok=1"], "unknown argument(s) smok for search space 'baseline'; valid arguments: smoke, depths, seeds, gpu"),
    (["sweep", "baseline", "--arg", "smoke"], "--arg takes key=value, got 'smoke'"),
    (["sweep", "optuna_lr_wd", "--arg", "model=vgg"], "unknown model.name 'vgg'; valid: resnet20"),
    (["sweep", "optuna_lr_wd", "--arg", "dataset=svhn"], "unknown data.dataset 'svhn'; valid: digits, cifar10, cifar100"),
    (["sweep", "missing/space.py"], "search space file missing/space.py does not exist"),
    (["data", "prepare", "digits"], "cannot prepare 'digits'; preparable datasets: cifar10, cifar100"),
])
def test_bad_input(args, expected):
    assert expected in one_line_error(run(*args))


def test_unknown_op_and_malformed_module(tmp_path):
    bad_op = tmp_path / "bad_op.py"
    bad_op.write_text("def space():\n    return {'param_space': {'augment': {'pipeline': [{'op': 'twirl'}]}}}\n")
    assert "unknown op 'twirl'; valid ops: flip, pad_crop, cutout" in one_line_error(run("sweep", str(bad_op)))
    broken = tmp_path / "broken.py"
    broken.write_text("def space(\n")
    assert "failed to import: SyntaxError" in one_line_error(run("sweep", str(broken)))
    # --debug shows the traceback instead.
    assert "Traceback" in run("--debug", "sweep", str(broken)).stderr


def test_missing_dataset_directory_fails_before_ray_starts(tmp_path):
    env = {"PATH": "", "SEARCHLAB_DATA": str(tmp_path), "HOME": str(tmp_path)}
    line = one_line_error(run("sweep", "baseline", "--arg", "smoke=True", "--storage", str(tmp_path), env=env))
    assert f"dataset 'cifar10' not found: {tmp_path}/cifar10 lacks train_x.npy" in line
    assert "searchlab data prepare cifar10" in line


def test_not_an_experiment(tmp_path):
    for command in ("resume", "status"):
        line = one_line_error(run(command, str(tmp_path)))
        assert f"{tmp_path} is not a searchlab experiment directory" in line


def test_arg_values_are_python_literals():
    assert parse_args_kv(["smoke=True", "depths=[20, 56]", "lr=1e-3", "model=resnet20"]) == {
        "smoke": True, "depths": [20, 56], "lr": 1e-3, "model": "resnet20"}


def test_augment_show_writes_the_grid(cifar_data, tmp_path):
    from torchvision.io import read_image

    from searchlab.data import load_dataset

    out = tmp_path / "grid.png"
    result = run("augment", "show", "cutout", "--out", str(out), "--images", "4", "--draws", "3",
                 env={"SEARCHLAB_DATA": cifar_data, "PATH": ""})
    assert result.returncode == 0, result.stderr
    grid = read_image(str(out))
    assert grid.shape == (3, 4 * 34 + 2, 4 * 34 + 2)  # 4 rows x (1 + 3) tiles of 32 + 2 padding
    shown = load_dataset("cifar10", val_size=0, test_size=4, split_seed=0, root=cifar_data).test.x
    tile = lambda r, c: grid[:, 2 + 34 * r:34 + 34 * r, 2 + 34 * c:34 + 34 * c]  # noqa: E731
    for row in range(4):
        assert torch.equal(tile(row, 0), shown[row])  # first column: the image unchanged
        assert not torch.equal(tile(row, 1), tile(row, 2))  # draws differ
