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

from searchlab.errors import UserError

SPEC_DEFAULTS = {
    "param_space": None,        # required
    "metric": "val_acc",        # reported by every epoch of the trainable; optimised by searcher and scheduler
    "mode": "max",              # (optuna: lists of metrics and modes search for a Pareto front)
    "trainable": "train",       # sweep.TRAINABLES: what one trial runs
    "num_samples": 1,           # with grid searches: repeats of the whole grid
    "searcher": "grid",         # sweep.SEARCHERS: grid | random | optuna
    "searcher_options": {},     # keyword arguments of that searcher (e.g. optuna: sampler)
    "scheduler": "fifo",        # sweep.SCHEDULERS: fifo (None) | asha
    "scheduler_options": {},    # keyword arguments of that scheduler (e.g. asha: grace_period)
    "resources": {"cpu": 1, "gpu": 0},  # per trial; gpu may be fractional to pack trials
    "max_concurrent_trials": None,
    "max_failures": 2,          # retries of a trial whose worker died, from its checkpoint
    "seed": 0,                  # seeds the searcher
    "cka": None,                # CKA comparisons in actors as trials finish: {"cpu": 1, "gpu": 0, "actors": 1}
    "figures": None,            # after the sweep, figures and tables in EXPERIMENT/figures: sweep.FIGURES
}
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
        # Imported again only when the file changed: a second import of the same source would make
        # new functions, and Tune could no longer pickle the define-by-run function of the first.
        module, source = sys.modules.get(module_name), path.read_text()
        if getattr(module, "__file__", None) != str(path) or getattr(module, "_searchlab_source", None) != source:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            module._searchlab_source = source
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[module_name]
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


def coerce_args(function, raw_args):
    """Command-line text -> the typed arguments of ``function`` (a search space's ``space``).

    Each value is read as the type of its parameter: the annotation if there is one, else the
    default's type. bool: true or false in any case; int, float: a number; str: the text as given;
    tuple, list, dict, set: a Python literal. A parameter with nothing to go by (a None default, no
    annotation), a name the function does not take (``load`` reports it) or no ``function`` at all:
    a Python literal, true or false in any case, else the text. Values that are not text are
    already typed and pass through. A value of the wrong type is a UserError naming the argument,
    the value and the type expected.
    """
    import typing

    params = inspect.signature(function).parameters if function else {}
    try:
        hints = typing.get_type_hints(function) if function else {}
    except Exception:  # an annotation that does not resolve: fall back to the raw annotations
        hints = {}
    typed = {}
    for key, text in raw_args.items():
        expected = None
        param = params.get(key)
        if param is not None:
            if param.annotation is not param.empty:
                expected = hints.get(key, param.annotation)
            elif param.default is not param.empty and param.default is not None:
                expected = type(param.default)
        typed[key] = _read_arg(key, text, expected) if isinstance(text, str) else text
    return typed


def _read_arg(key, text, expected):
    """The command-line ``text`` of argument ``key`` as a value of type ``expected`` (None: unknown)."""
    import ast
    import types
    import typing

    def wrong(what):
        return UserError(f"argument {key}: expected {what}, got {text!r}")

    def literal(name):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise wrong(f"{name} written as a Python literal") from None

    if expected is None or expected is typing.Any or isinstance(expected, str):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text  # a bare word is a string
    origin = typing.get_origin(expected) or expected
    if origin in (typing.Union, types.UnionType):  # Optional[int], int | None, ...
        arms = typing.get_args(expected)
        if type(None) in arms and text == "None":
            return None
        for arm in arms:
            if arm is not type(None):
                try:
                    return _read_arg(key, text, arm)
                except UserError:
                    pass
        raise wrong(" or ".join("None" if a is type(None) else getattr(a, "__name__", str(a)) for a in arms))
    if origin is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise wrong("true or false (bool)")
    if origin in (int, float):
        try:
            return origin(text)
        except ValueError:
            raise wrong(origin.__name__) from None
    if origin is str:
        return text
    if origin in (tuple, list, set, frozenset, dict):
        value = literal(origin.__name__)
        # [20, 56] and (20, 56) both read as a sequence; the parameter's own type is what it gets.
        kinds = (dict,) if origin is dict else (tuple, list, set, frozenset)
        if not isinstance(value, kinds):
            raise wrong(f"{origin.__name__} written as a Python literal")
        return origin(value)
    name = getattr(origin, "__name__", str(expected))
    value = literal(name)  # any other type: a literal of that type
    if isinstance(origin, type) and not isinstance(value, origin):
        raise wrong(name)
    return value


def check(spec, name):
    """The spec with its defaults filled in; a UserError naming the valid choices for anything wrong.

    Every option of every choice of the param space is resolved by the trainable, so that a bad
    model, dataset or op name in any corner of the grid fails here, not hours later in a trial.
    """
    from searchlab.sweep import FIGURES, SCHEDULERS, SEARCHERS, TRAINABLES, build

    if not isinstance(spec, dict):
        raise UserError(f"space() of {name!r} must return a dict with keys {', '.join(SPEC_DEFAULTS)}")
    unknown = set(spec) - set(SPEC_DEFAULTS)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in search space {name!r}; "
                        f"valid: {', '.join(SPEC_DEFAULTS)}")
    spec = {**SPEC_DEFAULTS, **spec}
    spec["scheduler"] = spec["scheduler"] or "fifo"  # None: Tune's first-in first-out
    for key, table, plural in [("trainable", TRAINABLES, "trainables"), ("searcher", SEARCHERS, "searchers"),
                               ("scheduler", SCHEDULERS, "schedulers")]:
        if spec[key] not in table:
            raise UserError(f"unknown {key} {spec[key]!r}; valid {plural}: {', '.join(table)}")
    objectives = _objectives(spec)
    if spec["figures"] is not None and spec["figures"] not in FIGURES:
        raise UserError(f"unknown figures {spec['figures']!r}; valid: {', '.join(FIGURES)}")
    space = spec["param_space"]
    if spec["searcher"] == "optuna":
        if not callable(space):
            raise UserError(f"search space {name!r}: the optuna searcher takes a define-by-run "
                            "function as param_space")
    elif not isinstance(space, dict):
        raise UserError(f"search space {name!r}: param_space must be a dict (or, with the optuna "
                        "searcher, a define-by-run function)")
    trainable = TRAINABLES[spec["trainable"]]
    for example in examples(space):
        every, at_end = trainable.metrics(trainable.resolve(example))
        if len(objectives) > 1:  # judged on the last report only
            missing = [m for m, _ in objectives if m not in every + at_end]
            if missing:
                raise UserError(f"metric(s) {', '.join(missing)} are not reported by trainable "
                                f"{spec['trainable']!r}; it reports: {', '.join(every + at_end)}")
        elif spec["metric"] not in every:
            late = f" ({spec['metric']} comes only with the last epoch)" if spec["metric"] in at_end else ""
            raise UserError(f"metric {spec['metric']!r} is not reported by every epoch of trainable "
                            f"{spec['trainable']!r}{late}; it reports: {', '.join(every)}")
    build(SEARCHERS, "searcher", spec)
    build(SCHEDULERS, "scheduler", spec)
    return spec


def _objectives(spec):
    """[(metric, mode)] of the spec: one pair, or several for a multi-objective (Pareto) search."""
    metrics, modes = spec["metric"], spec["mode"]
    if isinstance(metrics, (list, tuple)) != isinstance(modes, (list, tuple)) or (
            isinstance(metrics, (list, tuple)) and len(metrics) != len(modes)):
        raise UserError(f"metric and mode must both be one name or lists of the same length, got "
                        f"{metrics!r} and {modes!r}")
    pairs = list(zip(metrics, modes)) if isinstance(metrics, (list, tuple)) else [(metrics, modes)]
    for _, mode in pairs:
        if mode not in ("max", "min"):
            raise UserError(f"mode must be max or min, got {mode!r}")
    if len(pairs) > 1 and (spec["searcher"] != "optuna" or spec["scheduler"] != "fifo"):
        raise UserError("several metrics (a multi-objective search) need searcher optuna and scheduler "
                        f"fifo, got {spec['searcher']} and {spec['scheduler']}")
    return pairs


def check_data(spec):
    """Fail early, on the driver, when a dataset the sweep needs is not on disk."""
    check_configs_data(example_configs(spec))


def example_configs(spec):
    """Resolved trial configs showing every choice of the space (plain dicts: they travel to the
    nodes of a cluster, where ``check_configs_data`` checks the data as the trials will see it)."""
    from searchlab.sweep import SEARCHERS, TRAINABLES, build, resolve_kind

    configs = [TRAINABLES[spec["trainable"]].resolve(example) for example in examples(spec["param_space"])]
    # A searcher that suggests whole trials of its own (DeepAA's) shows one of each kind.
    searcher = build(SEARCHERS, "searcher", spec)
    return configs + [resolve_kind(c) for c in getattr(searcher, "example_configs", list)()]


def check_configs_data(configs):
    """UserError when a dataset these resolved trial configs need is not on disk here."""
    from searchlab import corruptions
    from searchlab.data import require

    for cfg in configs:
        data = cfg.get("data")
        if data:
            require(data["dataset"], data["root"])
        if "corruptions" in cfg.get("eval", {}).get("every_epoch", []) + cfg.get("eval", {}).get("at_end", []):
            corruptions.load(data["dataset"], data["root"])


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
