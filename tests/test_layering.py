"""Data flows one way (DESIGN.md section 3): the lower modules import neither Ray nor anything above
them. Read from the source with ast, so a lazy import inside a function counts too."""
import ast
from pathlib import Path

import searchlab

PACKAGE = Path(searchlab.__file__).parent
# Bottom to top: each of these may import only the ones before it (and its own package).
LOWER = ["errors", "data", "corruptions", "augment", "models", "splitbn", "regimes", "train", "deepaa", "fourier",
         "evals", "checkpoint", "config", "analysis.cka"]
# Everything else in the package is above all of them.
ABOVE = ["version", "trainable", "deepaa_trials", "deepaa_search", "spaces", "cluster", "sweep", "cli", "analysis.study",
         "analysis.actors", "analysis.figures", "analysis.refinement", "analysis.deepaa_figures", "analysis.report"]


def module_files(name):
    path = PACKAGE.joinpath(*name.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def imports(path):
    """Every module named by an import statement in the file, absolute."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level]
                found.add(".".join([*base, node.module] if node.module else base))
            else:
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "searchlab")
    return found


def test_every_module_is_placed():
    placed = {f for name in LOWER + ABOVE for f in module_files(name)}
    package_inits = {PACKAGE / "__init__.py", PACKAGE / "analysis" / "__init__.py"}
    assert set(PACKAGE.rglob("*.py")) - placed - package_inits == set()


def test_lower_modules_import_neither_ray_nor_modules_above_them():
    for level, name in enumerate(LOWER):
        allowed = {f"searchlab.{n}" for n in LOWER[:level + 1]}
        for path in module_files(name):
            for module in imports(path):
                assert module.split(".")[0] != "ray", f"{path.name} imports {module}"
                if module.startswith("searchlab."):
                    assert any(module == a or module.startswith(a + ".") for a in allowed), (
                        f"searchlab/{path.relative_to(PACKAGE)} imports {module}, which is not below it")


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from searchlab import trainable\n    import ray.tune\n")
    assert {"searchlab.trainable", "ray.tune"} <= imports(bad)


def test_analysis_reads_checkpoints_through_the_checkpoint_module():
    for name in ("analysis.study", "analysis.actors", "analysis.figures", "analysis.refinement"):
        for path in module_files(name):
            source = path.read_text()
            assert "searchlab.trainable" not in imports(path)
            assert "state.pt" not in source and "trial.json\"" not in source and "torch.load" not in source


def test_a_trial_worker_does_not_import_torchvision_or_scipy():
    # torchvision takes seconds to import (3.5 s here, as long as torch itself), which every trial
    # worker pays at start: the modules a trial imports, and the augmentation preview it writes, load
    # it only where a torchvision model or reference policy is used. scipy (0.2 s) likewise, only
    # where a corruption needs it.
    import subprocess
    import sys

    code = ("import sys, torch, searchlab.trainable, searchlab.deepaa_trials, searchlab.analysis.actors\n"
            "from searchlab.augment import STANDARD, Pipeline, preview_grid\n"
            "preview_grid(Pipeline(STANDARD, None, 10), torch.zeros(2, 3, 8, 8, dtype=torch.uint8),"
            " torch.zeros(2, dtype=torch.long), torch.Generator())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
