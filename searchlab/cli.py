"""The ``searchlab`` command: sweep, resume, status, cka, tensorboard, augment show, data prepare."""
import argparse
import ast
import os
import subprocess
import sys

from searchlab.errors import UserError


def parse_args_kv(pairs):
    """["smoke=True", "lr=0.1", "name=x"] -> {"smoke": True, "lr": 0.1, "name": "x"}."""
    args = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--arg takes key=value, got {pair!r}")
        try:
            args[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args[key] = value  # a bare word is a string
    return args


def cmd_sweep(a):
    from searchlab import sweep

    experiment = sweep.run(a.space, parse_args_kv(a.arg), name=a.name, storage=a.storage,
                           address=a.address)
    return _finish(experiment)


def cmd_resume(a):
    from searchlab import sweep

    return _finish(sweep.resume(a.experiment, address=a.address))


def _finish(experiment):
    """Print the trial table; exit 0 only when every trial finished."""
    from searchlab import sweep

    rows = sweep.trial_table(experiment)
    print(sweep.format_table(rows))
    print(f"\nexperiment: {experiment}\nTensorBoard: searchlab tensorboard {experiment}")
    unfinished = [r["trial"] for r in rows if r["status"] != "TERMINATED"]
    if unfinished:
        print(f"{len(unfinished)} trial(s) not finished ({', '.join(unfinished)}); "
              f"continue with: searchlab resume {experiment}", file=sys.stderr)
        return 1
    return 0


def cmd_status(a):
    from searchlab import sweep

    print(sweep.format_table(sweep.trial_table(a.experiment)))
    return 0


def cmd_cka(a):
    import shutil

    from searchlab import sweep
    from searchlab.analysis import study

    sweep.read_record(a.experiment)  # a one-line error for a folder that is not an experiment
    folder = os.path.join(a.experiment, study.CKA_DIR)
    if a.force and os.path.isdir(folder):
        shutil.rmtree(folder)
    if not study.study_trials(a.experiment):
        raise UserError(f"no finished trials with a cka.label in {a.experiment}")
    print(f"computed {study.run_pending(a.experiment)} comparison(s)")
    rows = study.report(a.experiment)
    print(sweep.format_table(rows))
    print(f"figures and tables in {folder}")
    return 0


def cmd_tensorboard(a):
    if not os.path.isdir(a.experiment):
        raise UserError(f"experiment directory {a.experiment} does not exist")
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", a.experiment, "--port", str(a.port)]
    print("running:", " ".join(command))
    return subprocess.call(command)


def cmd_data_prepare(a):
    from searchlab.data import prepare

    print(f"wrote {prepare(a.dataset, a.root)}")
    return 0


def cmd_augment_show(a):
    import torch
    from torchvision.io import write_png

    from searchlab.augment import Pipeline, preview_grid, validate
    from searchlab.data import load_dataset

    spec = a.spec
    if not spec.lstrip().startswith(("[", "{")):
        spec = repr(spec)  # a preset name
    try:
        spec = ast.literal_eval(spec)
    except (ValueError, SyntaxError) as e:
        raise UserError(f"SPEC must be a preset name, a list of op specs or a dict with pipeline/mix; "
                        f"cannot parse {a.spec!r}") from e
    pipeline, mix = (spec.get("pipeline", []), spec.get("mix")) if isinstance(spec, dict) else (spec, None)
    validate(pipeline, mix)
    data = load_dataset(a.dataset, val_size=0, test_size=a.images, split_seed=a.seed)
    grid = preview_grid(Pipeline(pipeline, mix, data.num_classes), data.test.x, data.test.y,
                        torch.Generator().manual_seed(a.seed), draws=a.draws)
    write_png(grid, a.out)
    print(f"wrote {a.out}: {a.images} {a.dataset} test images (rows), unchanged then {a.draws} draws")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="searchlab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="run a search space as a Ray Tune sweep")
    p.add_argument("space", help="a bundled search space (see search_spaces/) or a path to a .py file")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE", help="argument of space(); repeatable")
    p.add_argument("--name", help="experiment name (default: SPACE-DATE-TIME)")
    p.add_argument("--storage", help="results folder (default: $SEARCHLAB_RESULTS or ~/searchlab_results)")
    p.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("resume", help="finish an interrupted sweep from its checkpoints")
    p.add_argument("experiment", help="the experiment directory, STORAGE/NAME")
    p.add_argument("--address", help="Ray cluster address")
    p.set_defaults(run=cmd_resume)

    p = sub.add_parser("status", help="table of trials, their state and latest metrics")
    p.add_argument("experiment")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("cka", help="run (or re-run) the CKA analysis of a finished experiment")
    p.add_argument("experiment")
    p.add_argument("--force", action="store_true", help="recompute comparisons already on disk")
    p.set_defaults(run=cmd_cka)

    p = sub.add_parser("tensorboard", help="open TensorBoard on an experiment")
    p.add_argument("experiment")
    p.add_argument("--port", type=int, default=6006)
    p.set_defaults(run=cmd_tensorboard)

    p = sub.add_parser("augment", help="augmentations")
    augment_sub = p.add_subparsers(dest="augment_command", required=True)
    p = augment_sub.add_parser("show", help="write a grid of augmented images to a PNG file")
    p.add_argument("spec", help='a preset (e.g. cutout), a list of op specs (e.g. "[{\'op\': \'randaugment\'}]") '
                                'or a dict {"pipeline": ..., "mix": ...}')
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--images", type=int, default=8, help="rows: images shown")
    p.add_argument("--draws", type=int, default=8, help="columns: augmented draws of each image")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_augment_show)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="download a dataset into the numpy layout")
    p.add_argument("dataset")
    p.add_argument("--root", help="data folder (default: $SEARCHLAB_DATA)")
    p.set_defaults(run=cmd_data_prepare)
    return parser


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        return a.run(a)
    except (UserError, ValueError, FileNotFoundError) as e:
        if a.debug:
            raise
        print(f"searchlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if a.debug:
            raise
        print(f"searchlab: error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
