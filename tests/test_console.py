"""What a sweep prints: Tune's progress table, trial errors and searchlab's own lines; no warnings
unless --verbose. Two small digits sweeps (no CIFAR needed) run through the command line."""
import re
import subprocess
import sys
from pathlib import Path

# The second trial asks for more training images than digits has: it fails as it loads its data.
# sample_from is resolved only in the trial's own config, so no check before the sweep catches it.
SPACE = '''
from ray import tune


def space(fail: bool = False):
    return {
        "param_space": {
            "data": {"dataset": "digits", "val_size": 200, "test_size": 200,
                     "train_size": tune.sample_from(lambda config: 10**6 if config["seed"] else 400)},
            "model": {"name": "small_cnn"},
            "optim": {"lr": 0.1, "batch_size": 64, "epochs": 3},
            "seed": tune.grid_search([0, 1] if fail else [0]),
        },
        "max_failures": 0,
        "resources": {"cpu": 1},
    }
'''

# A warning line: a Python logging warning (Ray's "... WARNING file.py:N -- ..."), a Python warning
# ("UserWarning: ...", "warnings.warn(...)"), a warning of Ray's C++ core ("[2026-01-01 12:00:00,000
# W 123 123] ..."), a line that Ray's log deduplication folded ("[repeated 3x across cluster]"), or
# Tune's advice to resume with Tuner.restore instead of `searchlab resume`.
WARNING = re.compile(r"WARNING|Warning:|warnings\.warn|^\[\d{4}-\d\d-\d\d [\d:,.]+ W \d+ \d+\]"
                     r"|\[repeated \d+x|Tuner\.restore\(")
LOGDIR = re.compile(r"tensorboard --logdir (\S+?)`?$")


def warning_lines(output, experiment):
    """The warning lines of the output; a TensorBoard hint counts when its logdir is outside the
    experiment directory (Ray's session folder, say), since searchlab points TensorBoard there."""
    found = []
    for line in output.splitlines():
        logdir = LOGDIR.search(line)
        outside = logdir and not Path(logdir.group(1)).resolve().is_relative_to(experiment)
        if WARNING.search(line) or outside:
            found.append(line)
    return found


def sweep(tmp_path, *args):
    """searchlab [ARGS before the command] sweep tiny.py [--arg ...]: the result and the experiment."""
    space = tmp_path / "tiny.py"
    space.write_text(SPACE)
    before = [a for a in args if a.startswith("--verbose")]
    after = [a for a in args if a not in before]
    result = subprocess.run([sys.executable, "-m", "searchlab.cli", *before, "sweep", str(space),
                             "--storage", str(tmp_path / "results"), "--name", "tiny", *after],
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return result, (tmp_path / "results" / "tiny").resolve()


def test_warning_lines_are_recognised(tmp_path):
    experiment = tmp_path / "results" / "tiny"
    lines = [
        "2026-12-01 21:20:22,681\tWARNING authentication_token_setup.py:85 -- Token authentication ...",
        "(train pid=3698) Checkpoint successfully created at: ...[repeated 25x across cluster] (Ray ...",
        "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/ray/session_1/x`",
        "[2026-12-01 21:31:14,222 W 9429 9429] gcs_client.cc:210: Failed to get cluster ID from GCS",
        'Resume experiment with: Tuner.restore(path="/tmp/q2/qs", trainable=...)',
        "/x/models.py:346: UserWarning: skipped weights with mismatched shapes",
    ]
    fine = [f"To visualize your results with TensorBoard, run: `tensorboard --logdir {experiment}`",
            "Trial status: 4 TERMINATED", f"experiment: {experiment}"]
    assert warning_lines("\n".join(lines + fine), experiment) == lines


def test_default_console_has_no_warnings_but_keeps_tables_and_errors(tmp_path):
    result, experiment = sweep(tmp_path, "--arg", "fail=true")
    output = result.stdout + result.stderr
    assert warning_lines(output, experiment) == [], output
    # One trial failed, so the sweep is not finished (exit 1) and says how to go on.
    assert result.returncode == 1, output
    assert f"continue with: searchlab resume {experiment}" in result.stderr
    # Tune's progress table, with its summary of errored trials and their error files ...
    assert "Trial status:" in result.stdout and "Trial name" in result.stdout
    assert "Number of errored trials: 1" in result.stdout
    assert re.search(r"train_\w+_00001 .* \S+/error\.txt", result.stdout), result.stdout
    # ... the failed trial's error as it happened ...
    assert "Trial task failed for trial" in result.stderr and "data.train_size" in result.stderr
    # ... and searchlab's table, which marks the trial that finished as the best, and its paths.
    lines = result.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("trial ")):]
    assert table[0].split()[:3] == ["trial", "best", "status"]
    assert re.match(r"train_\w+_00000 +\* +TERMINATED", table[1]), table
    assert re.match(r"train_\w+_00001 +ERROR", table[2]), table
    assert f"experiment: {experiment}" in result.stdout
    assert f"TensorBoard: searchlab tensorboard {experiment}" in result.stdout


def test_verbose_shows_what_ray_and_tune_print(tmp_path):
    # fail=false must read as False: one trial, which finishes.
    result, experiment = sweep(tmp_path, "--verbose", "--arg", "fail=false")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Lines the default console leaves out: Ray's INFO lines on the driver and in the workers, and
    # Tune's TensorBoard hint at its own staging folder.
    assert "Started a local Ray instance" in output
    assert "Checkpoint successfully created" in output
    assert warning_lines(output, experiment), output
