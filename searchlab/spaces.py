"""Search-space modules: ``search_spaces/<name>.py`` (or any ``.py`` file) with a function ``space``.

``space(**args)`` returns a dict with the keys of ``SPEC_DEFAULTS``; ``param_space`` is a nested trial
config with Tune domains in it, or, for the Optuna searcher, a define-by-run function of an Optuna
trial that suggests flat ``group/key`` names and returns the constants (see ``flatten``).
"""
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from ray import tune

from searchlab.config import resolve
from searchlab.errors import UserError

SPEC_DEFAULTS = {
    "param_space": None,        # required
    "metric": "val_acc",
    "mode": "max",
    "num_samples": 1,           # with grid searches: repeats of the whole grid
    "searcher": "grid",         # grid | random | optuna
    "scheduler": None,          # None | asha
    "resources": {"cpu": 1, "gpu": 0},  # per trial; gpu may be fractional to pack trials
    "max_concurrent_trials": None,
    "max_failures": 2,          # retries of a trial whose worker died, from its checkpoint
    "seed": 0,                  # seeds the searcher
    "cka": None,                # CKA comparisons in actors as trials finish: {"cpu": 1, "gpu": 0, "actors": 1}
}
SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = (None, "asha")
SPACES_PACKAGE = "search_spaces"


def available():
    """Names of the bundled search spaces."""
    try:
        package = importlib.import_module(SPACES_PACKAGE)
    except ImportError:
        return []
    return sorted(p.stem for p in Path(package.__path__[0]).glob("*.py") if not p.stem.startswith("_"))


def load_module(name):
    """Import a search-space module by bundled name or by ``.py`` path."""
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"search space file {name} does not exist")
        # Registered under a stable module name so that pickled define-by-run functions resolve
        # again when the sweep is resumed from this same file.
        module_name = f"{SPACES_PACKAGE}_file_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise UserError(f"search space {name} failed to import: {type(e).__name__}: {e}") from e
    else:
        if name not in available():
            raise UserError(f"unknown search space {name!r}; valid search spaces: "
                            f"{', '.join(available())} (or a path to a .py file)")
        try:
            module = importlib.import_module(f"{SPACES_PACKAGE}.{name}")
        except Exception as e:
            raise UserError(f"search space {name!r} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "space", None)):
        raise UserError(f"search space {name!r} has no function space(...) returning the sweep")
    return module


def load(name, args=None):
    """The checked sweep spec of search space ``name`` called with ``args``."""
    module = load_module(name)
    args = dict(args or {})
    params = inspect.signature(module.space).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in args if k not in params]
    if unknown and not takes_any:
        raise UserError(f"unknown argument(s) {', '.join(unknown)} for search space {name!r}; "
                        f"valid arguments: {', '.join(params) or 'none'}")
    try:
        spec = module.space(**args)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"search space {name!r} failed: {type(e).__name__}: {e}") from e
    return check(spec, name)


def check(spec, name):
    if not isinstance(spec, dict):
        raise UserError(f"space() of {name!r} must return a dict with keys {', '.join(SPEC_DEFAULTS)}")
    unknown = set(spec) - set(SPEC_DEFAULTS)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in search space {name!r}; "
                        f"valid: {', '.join(SPEC_DEFAULTS)}")
    spec = {**SPEC_DEFAULTS, **spec}
    if spec["searcher"] not in SEARCHERS:
        raise UserError(f"unknown searcher {spec['searcher']!r}; valid searchers: {', '.join(SEARCHERS)}")
    if spec["scheduler"] not in SCHEDULERS:
        raise UserError(f"unknown scheduler {spec['scheduler']!r}; valid schedulers: none, asha")
    if spec["mode"] not in ("max", "min"):
        raise UserError(f"mode must be max or min, got {spec['mode']!r}")
    space = spec["param_space"]
    if spec["searcher"] == "optuna":
        if not callable(space):
            raise UserError(f"search space {name!r}: the optuna searcher takes a define-by-run "
                            "function as param_space")
    elif not isinstance(space, dict):
        raise UserError(f"search space {name!r}: param_space must be a dict (or, with the optuna "
                        "searcher, a define-by-run function)")
    # Every option of every choice, tried one at a time: a bad model, dataset or op name in any
    # corner of the grid fails here, not hours later in a trial.
    for example in examples(space):
        resolve(example)
    return spec


def check_data(spec):
    """Fail early, on the driver, when a dataset the sweep needs is not on disk."""
    from searchlab.data import require

    for example in examples(spec["param_space"]):
        data = resolve(example)["data"]
        require(data["dataset"], data["root"])


def examples(param_space):
    """Trial configs in which each alternative of each choice appears at least once."""
    return [_optuna_example(param_space)] if callable(param_space) else _examples(param_space)


def flatten(config, prefix=""):
    """{"optim": {"lr": 1}} -> {"optim/lr": 1}: the names Optuna's define-by-run space returns."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _options(node):
    """The concrete alternatives of one node of a param space."""
    if isinstance(node, dict) and set(node) == {"grid_search"}:
        return [o for option in node["grid_search"] for o in _examples(option)]
    if isinstance(node, tune.search.sample.Categorical):
        return [o for option in node.categories for o in _examples(option)]
    if isinstance(node, tune.search.sample.Function):
        return []  # sample_from: only the trial can tell
    if isinstance(node, tune.search.sample.Domain):
        return [node.sample()]
    if isinstance(node, dict):
        return _examples(node)
    return [node]


def _examples(node):
    if not isinstance(node, dict) or set(node) == {"grid_search"}:
        return _options(node) if isinstance(node, dict) else [node]
    options = {key: _options(value) for key, value in node.items()}
    options = {key: opts for key, opts in options.items() if opts}
    base = {key: opts[0] for key, opts in options.items()}
    examples = [base]
    for key, opts in options.items():
        examples += [{**base, key: option} for option in opts[1:]]
    return examples


def _optuna_example(define_by_run):
    import optuna
    from ray.tune.utils.util import unflatten_dict

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study().ask()
    constants = define_by_run(trial) or {}
    return unflatten_dict({**trial.params, **constants})
