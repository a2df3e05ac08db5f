"""The searchlab command: run a search space as a Ray Tune sweep, resume it, see its trials, compare
its networks by CKA, open TensorBoard on it; preview augmentations; prepare datasets."""
import argparse
import ast
import errno
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap

from searchlab import __version__
from searchlab.errors import UserError


def parse_args_kv(pairs, function=None):
    """["smoke=false", "depths=[20, 56]"] -> {"smoke": False, "depths": (20, 56)}.

    Each value is read as the type of that parameter of ``function`` (a search space's ``space``,
    see spaces.coerce_args); without a function, as a Python literal (a bare word is a string).
    """
    from searchlab import spaces

    raw = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--arg takes key=value, got {pair!r}")
        raw[key] = value
    return spaces.coerce_args(function, raw)


def _sweep(a):
    """The sweep module, with the console set up as --verbose asks before Ray or Tune print."""
    from searchlab import sweep

    sweep.configure_console(verbose=a.verbose)
    return sweep


def _existing(path):
    """A one-line error for a path that is not there, before anything asks it to be an experiment."""
    if not os.path.exists(path):
        raise UserError(f"experiment directory {path} does not exist")
    return path


def cmd_sweep(a):
    from searchlab import spaces

    args = parse_args_kv(a.arg, spaces.load_module(a.space).space)
    sweep = _sweep(a)
    experiment = sweep.run(a.space, args, name=a.name, storage=a.storage, address=a.address)
    return _finish(sweep, experiment)


def cmd_resume(a):
    _existing(a.experiment)
    sweep = _sweep(a)
    return _finish(sweep, sweep.resume(a.experiment, address=a.address))


def _finish(sweep, experiment):
    """Print the trial table; exit 0 only when every trial finished."""
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
    _existing(a.experiment)
    sweep = _sweep(a)
    print(sweep.format_table(sweep.trial_table(a.experiment)))
    return 0


def cmd_cka(a):
    import shutil

    from searchlab.analysis import study

    _existing(a.experiment)
    sweep = _sweep(a)
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


def cmd_figures(a):
    from searchlab import spaces

    _existing(a.experiment)
    sweep = _sweep(a)
    record = sweep.read_record(a.experiment)
    spec = spaces.load(record["space"], record["args"])
    if not spec["figures"]:
        raise UserError(f"search space {record['space']!r} names no figures; valid: "
                        f"{', '.join(sweep.FIGURES)} (the spec's \"figures\" key)")
    written = sweep.write_figures(spec, a.experiment)
    if not written:
        raise UserError(f"no finished trials in {a.experiment} to draw")
    for path in written:
        print(path)
    return 0


def cmd_report(a):
    from searchlab.analysis import report

    _existing(a.experiment)
    path, written = report.write(a.experiment, a.out, a.format)
    print(f"{report.progress_line(written['progress'])}\nreport: {path}")
    return 0


def cmd_tensorboard(a):
    _existing(a.experiment)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", a.experiment, "--port", str(a.port)]
    print("running:", " ".join(command), flush=True)
    # Stopping searchlab stops TensorBoard: SIGTERM and SIGINT go on to it and searchlab waits for it,
    # so no server is left holding the port. TensorBoard runs in its own process group, so that a
    # Ctrl-C in the terminal reaches it once, through here, rather than twice.
    child, received = None, []

    def forward(signum, frame):
        received.append(signum)
        if child is not None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen(command, process_group=0)
        for signum in received:  # arrived while the child was starting
            child.send_signal(signum)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def cmd_data_prepare(a):
    from searchlab.data import prepare

    print(f"wrote {prepare(a.dataset, a.root)}")
    return 0


def cmd_data_corrupt(a):
    from searchlab.corruptions import build

    print(f"wrote {build(a.dataset, a.root, seed=a.seed, severities=a.severities)}")
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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when the help is shown: listing
    the bundled search spaces imports them, which no other command should wait for."""

    def format_help(self):
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def spaces_help():
    """The bundled search spaces: each one's summary and the arguments --arg sets, with defaults."""
    from searchlab import spaces

    lines = ["bundled search spaces and their arguments (set with --arg NAME=VALUE):"]
    for name in spaces.available():
        try:
            function = spaces.load_module(name).space
        except UserError as e:
            lines.append(f"  {name}: {e}")
            continue
        doc = inspect.getdoc(function) or inspect.getdoc(inspect.getmodule(function)) or ""
        lines.append(f"  {name}: {doc.splitlines()[0]}" if doc else f"  {name}")
        arguments = ", ".join(map(str, inspect.signature(function).parameters.values()))
        lines += textwrap.wrap(arguments or "no arguments", width=100, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines)


EXPERIMENT_HELP = "experiment directory, STORAGE/NAME (sweep prints it when it starts and ends)"
VERBOSE_HELP = ("show all that Ray and Tune print (by default: Tune's progress table, errors and "
                "searchlab's own lines)")


# A write that failed because of the storage itself, not because of searchlab: what to say about it.
STORAGE_ERRORS = {errno.EROFS: "its file system is read-only", errno.ENOSPC: "no space left on its device",
                  errno.EDQUOT: "the disk quota is exceeded"}


def storage_problem(error, storage):
    """A one-line message for an OSError of a full or read-only storage, else None. ``storage``: the
    folder the command writes to, named when the error names no file (Tune's copies through pyarrow).
    Checkpoints and Tune's state saved before stay as they were (a state file cut short is put back by
    resume from its copy, sweep.repair_state)."""
    if error.errno not in STORAGE_ERRORS:
        return None
    where = error.filename or f"to storage {storage}"
    return (f"cannot write {where}: {STORAGE_ERRORS[error.errno]}. What was saved before is intact: once the "
            "storage is writable, `searchlab resume` the experiment (or start it again)")


def build_parser():
    parser = Parser(prog="searchlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def verbose(p):  # also accepted after the command; SUPPRESS keeps a --verbose given before it
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)

    p = sub.add_parser("sweep", help="run a search space as a Ray Tune sweep", epilog=spaces_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="a bundled search space (listed below) or a path to a .py file "
                                 "with a function space(...)")
    p.add_argument("--arg", action="append", metavar="NAME=VALUE",
                   help="an argument of space(), read as the type of its default or annotation "
                        "(true/false, a number, a text, a Python literal); repeatable")
    p.add_argument("--name", help="experiment name (default: SPACE-DATE-TIME)")
    p.add_argument("--storage", help="results folder (default: $SEARCHLAB_RESULTS or ~/searchlab_results)")
    p.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    verbose(p)
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("resume", help="finish an interrupted sweep from its checkpoints")
    p.add_argument("experiment", help=EXPERIMENT_HELP)
    p.add_argument("--address", help="Ray cluster address (default: the sweep's own, else this machine)")
    verbose(p)
    p.set_defaults(run=cmd_resume)

    p = sub.add_parser("status", help="table of trials, their state and latest metrics")
    p.add_argument("experiment", help=EXPERIMENT_HELP)
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("cka", help="run (or re-run) the CKA analysis of a finished experiment")
    p.add_argument("experiment", help=EXPERIMENT_HELP + "; its trials set cka.label (e.g. space cka_study)")
    p.add_argument("--force", action="store_true", help="recompute comparisons already on disk")
    p.set_defaults(run=cmd_cka)

    p = sub.add_parser("figures", help="(re)draw the figures and tables of an experiment's study")
    p.add_argument("experiment", help=EXPERIMENT_HELP + "; its space names figures (e.g. space splitbn)")
    p.set_defaults(run=cmd_figures)

    p = sub.add_parser("report", help="one page of an experiment: its study's tables and figures, seeds' "
                                      "spread, cost, progress (md or self-contained html)")
    p.add_argument("experiment", help=EXPERIMENT_HELP + "; finished or still running")
    p.add_argument("--out", help="folder to write into (default: EXPERIMENT/report)")
    p.add_argument("--format", choices=("md", "html"), default="md", help="default: %(default)s")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("tensorboard", help="open TensorBoard on an experiment")
    p.add_argument("experiment", help=EXPERIMENT_HELP + ", or a storage folder to see all its experiments")
    p.add_argument("--port", type=int, default=6006, help="port TensorBoard serves on (default: 6006)")
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
    p.add_argument("dataset", help="the dataset to download (cifar10, cifar100)")
    p.add_argument("--root", help="data folder: the dataset is written to ROOT/DATASET/*.npy "
                                  "(default: $SEARCHLAB_DATA)")
    p.set_defaults(run=cmd_data_prepare)
    p = data_sub.add_parser("corrupt", help="write the CIFAR-10-C corruptions of a dataset's test split")
    p.add_argument("dataset", help="the dataset whose test split is corrupted (cifar10, cifar100)")
    p.add_argument("--root", help="data folder: reads ROOT/DATASET/test_*.npy, writes ROOT/DATASET-c/*.npy "
                                  "(default: $SEARCHLAB_DATA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (default: 0)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="severity blocks to write, in this order (default: 1 2 3 4 5, the official layout)")
    p.set_defaults(run=cmd_data_corrupt)
    return parser


def ray_environment(address):
    """Set what Ray reads once, when it is imported, for a driver of a cluster at ``address`` (None:
    the one ``searchlab sweep`` starts on this machine). A value the user set is kept."""
    if "ray" in sys.modules:  # read already: setting them now would only reach child processes
        return
    # Ray 2.60 turns token authentication on for a cluster that ray.init starts, and warns that it did
    # so, unless RAY_AUTH_MODE names the mode: token, Ray's own default. Every Ray process this driver
    # starts inherits it, so they agree; a driver in token mode also connects to a cluster started
    # with authentication disabled. With --address, the token of a cluster started elsewhere must be
    # in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Ray's servers (GCS, raylet, workers) listen on the node's network address, reachable from other
    # machines. A cluster on this machine needs none of that: Ray's single-node switch makes them all
    # listen on 127.0.0.1. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 undoes it.
    if not address or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _address(a):
    """The cluster address a command will use: --address, or for resume the sweep's own."""
    if getattr(a, "address", None) or a.command != "resume":
        return getattr(a, "address", None)
    try:
        with open(os.path.join(a.experiment, "searchlab_sweep.json")) as f:
            return json.load(f).get("address")
    except (OSError, ValueError):
        return None  # resume itself explains what is wrong with the folder


def main(argv=None):
    a = build_parser().parse_args(argv)
    ray_environment(_address(a))
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
        # The folder the command writes to: the experiment, or the storage a sweep starts in.
        storage = (getattr(a, "experiment", None) or getattr(a, "storage", None)
                   or os.environ.get("SEARCHLAB_RESULTS", "~/searchlab_results"))
        if isinstance(e, OSError) and storage_problem(e, storage):
            print(f"searchlab: error: {storage_problem(e, storage)}", file=sys.stderr)
            return 1
        print(f"searchlab: error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
