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
    (["sweep", "nope"], "unknown search space 'nope'; valid search spaces: augmentations, baseline, cka_study, deepaa, optuna_lr_wd, quickstart"),
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


# ---- help, version, paths -----------------------------------------------------------------------

def test_version():
    import searchlab

    result = run("--version")
    assert result.returncode == 0 and result.stdout == f"searchlab {searchlab.__version__}\n"


def test_sweep_help_lists_the_spaces_with_their_arguments():
    from searchlab import spaces

    result = run("sweep", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # the argument lists are wrapped
    for name in spaces.available():
        assert f" {name}: " in text
    assert ("quickstart: Quick start: a small CNN on scikit-learn's 8x8 digits, learning rate x "
            "augmentation (4 trials). epochs: int = 12") in text
    assert "smoke: bool = False, depths=(20, 32, 44, 56, 110), seeds: int = 1, gpu: float = 0" in text


def test_help_describes_every_path_argument_and_has_no_markup():
    assert "``" not in run("--help").stdout
    for command, argument in [("status", "experiment"), ("resume", "experiment"), ("cka", "experiment"),
                              ("tensorboard", "experiment"), ("data prepare", "dataset")]:
        result = run(*command.split(), "--help")
        assert result.returncode == 0, result.stderr
        positional = result.stdout.split("positional arguments:")[1].splitlines()[1]
        assert positional.split()[0] == argument and len(positional.split()) > 3, result.stdout
    assert "ROOT/DATASET" in run("data", "prepare", "--help").stdout


def test_missing_experiment_directory(tmp_path):
    missing = tmp_path / "nope"
    for command in ("status", "resume", "cka", "tensorboard"):
        line = one_line_error(run(command, str(missing)))
        assert line == f"searchlab: error: experiment directory {missing} does not exist"


# ---- --arg values are read as the types of space()'s parameters ---------------------------------

def test_arg_values_take_the_types_of_the_space_parameters():
    from searchlab import spaces

    baseline = spaces.load_module("baseline").space
    assert parse_args_kv(["smoke=false"], baseline) == {"smoke": False}
    assert parse_args_kv(["smoke=FALSE", "seeds=3", "gpu=0.5"], baseline) == {"smoke": False, "seeds": 3, "gpu": 0.5}
    assert parse_args_kv(["smoke=True"], baseline)["smoke"] is True
    assert parse_args_kv(["depths=[20, 56]"], baseline) == {"depths": (20, 56)}
    augmentations = spaces.load_module("augmentations").space
    assert parse_args_kv(["model=resnet20", "names=['none', 'cutmix']"], augmentations) == {
        "model": "resnet20", "names": ("none", "cutmix")}
    # The bug this fixes: "false" was a truthy string, so smoke=false ran the smoke variant.
    assert spaces.load("baseline", parse_args_kv(["smoke=false"], baseline))["param_space"]["optim"]["epochs"] == 182


@pytest.mark.parametrize("args, expected", [
    (["sweep", "baseline", "--arg", "smoke=maybe"], "argument smoke: expected true or false (bool), got 'maybe'"),
    (["sweep", "quickstart", "--arg", "epochs=abc"], "argument epochs: expected int, got 'abc'"),
    (["sweep", "baseline", "--arg", "gpu=half"], "argument gpu: expected float, got 'half'"),
    (["sweep", "baseline", "--arg", "depths=20"], "argument depths: expected tuple written as a Python literal, got '20'"),
])
def test_arg_of_the_wrong_type(args, expected):
    assert one_line_error(run(*args)) == f"searchlab: error: {expected}"


# ---- the best trial -----------------------------------------------------------------------------

def test_best_trial_is_judged_by_its_best_so_far_value():
    from searchlab.sweep import _best_index

    results = [{"val_acc": 0.90, "best_val_acc": 0.95}, {"val_acc": 0.93, "best_val_acc": 0.93}, {}]
    assert _best_index(results, "val_acc", "max") == 0  # the best epoch counts, not the last
    assert _best_index([{"val_loss": 0.5}, {"val_loss": 0.2}, {"val_loss": float("nan")}], "val_loss", "min") == 1
    assert _best_index([{"val_acc": 0.5}, {"val_acc": 0.7}], "val_acc", "min") == 0
    assert _best_index([{}, {"trial_id": "x"}], "val_acc", "max") is None


def test_format_table_marks_the_best_column():
    from searchlab.sweep import format_table

    text = format_table([{"trial": "a", "best": "", "val_acc": 0.5}, {"trial": "b", "best": "*", "val_acc": 0.75}])
    assert text.splitlines() == ["trial  best  val_acc", "a            0.5", "b      *     0.75"]


# ---- tensorboard stops with searchlab -----------------------------------------------------------

def test_tensorboard_stops_when_searchlab_is_terminated(tmp_path):
    import os
    import signal
    import socket
    import time
    from pathlib import Path

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    searchlab = subprocess.Popen([sys.executable, "-m", "searchlab.cli", "tensorboard", str(tmp_path),
                                  "--port", str(port)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        children = f"/proc/{searchlab.pid}/task/{searchlab.pid}/children"
        deadline = time.monotonic() + 60
        while child is None and time.monotonic() < deadline:
            pids = Path(children).read_text().split() if os.path.exists(children) else []
            child = int(pids[0]) if pids else None
            time.sleep(0.2)
        assert child is not None, "searchlab started no TensorBoard"
        time.sleep(2)  # let TensorBoard get going
        searchlab.send_signal(signal.SIGTERM)
        searchlab.wait(timeout=30)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{child}"), "TensorBoard outlived searchlab"
    finally:
        for pid in (searchlab.pid, child):
            if pid and os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
        searchlab.wait(timeout=10)
