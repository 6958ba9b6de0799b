"""The package's layout is its architecture: packages by concern, bottom to top, and inside each package modules in
layers; a module imports only from its own layer or those below it. The core is importable without Ray, MLflow or
Optuna."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gkd_tune"
# Bottom to top (docs/method.md, "Code layout"): package -> its modules' layers, in the order data flows.
LAYERS = {
    "core": [  # plain PyTorch: never Ray, MLflow or Optuna
        {"files", "params", "errors", "stats"},  # file names and I/O, the parameter schema, errors as one line, noise
        {"data"},
        {"models"},
        {"schedules", "sinkhorn", "losses"},
        {"distillers"},
        {"loop"},
        {"teacher"},
    ],
    "sweep": [  # a sweep inside Ray Tune: its file, search, tracking, trainable, report
        {"storage", "worker_files", "trial_history"},
        {"space"},
        {"strategy", "resume"},
        {"tracking", "trainable", "progress"},
        {"report", "registry", "simulate"},
        {"confirm"},
    ],
    "cluster": [  # where it runs: which Ray, the checks before a sweep, the doctor
        {"preflight", "runtime", "aws"},
        {"doctor"},
    ],
    "": [  # the run engine and the command-line programs (python -m gkd_tune.<command>)
        {"cli"},
        {"engine"},
        {"search", "reproduce", "train", "report", "doctor", "data", "teacher", "export", "simulate"},
    ],
}
ORDER = [(package, i) for package, layers in LAYERS.items() for i in range(len(layers))]
CORE_FREE_OF = ("ray", "mlflow", "optuna")


def module_of(parts: tuple[str, ...]) -> str:
    """'core.data' for gkd_tune/core/data/cache.py, 'search' for gkd_tune/search.py."""
    return ".".join(parts[:2]) if parts[0] in LAYERS else parts[0]


def rank(module: str) -> int:
    """Its layer's position from the bottom, over all packages."""
    package, _, name = module.rpartition(".")
    layer = next(i for i, names in enumerate(LAYERS[package]) if name in names)
    return ORDER.index((package, layer))


def package_imports(path: Path) -> set[str]:
    """The gkd_tune modules a file imports anywhere (function-level imports included), as 'core.data', 'engine'."""
    inside = path.relative_to(PACKAGE).with_suffix("").parts
    imported = []  # dotted paths below gkd_tune, as tuples
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gkd_tune.")):
            base = inside[: len(inside) - node.level] if node.level else ()
            target = (*base, *(node.module.split(".") if node.module else []))
            if node.module == "gkd_tune" or not node.level and node.module.startswith("gkd_tune."):
                target = tuple(node.module.split(".")[1:])
            if target and (target[0] not in LAYERS or len(target) > 1):
                imported.append(target)  # from a module (or a module's own package, such as core.data)
            else:  # from a package: each name is a module
                imported += [(*target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [tuple(a.name.split(".")[1:]) for a in node.names if a.name.startswith("gkd_tune.")]
    return {module_of(parts) for parts in imported if parts} & declared()


def declared() -> set[str]:
    return {f"{package}.{name}" if package else name for package, layers in LAYERS.items()
            for layer in layers for name in layer}


def modules() -> dict[str, list[Path]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts in (("__init__",),) or (len(parts) == 2 and parts[1] == "__init__" and parts[0] in LAYERS):
            continue
        found.setdefault(module_of(parts), []).append(path)
    return found


def test_every_module_has_a_package_and_a_layer():
    assert set(modules()) == declared()


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{path.relative_to(PACKAGE)} imports {target}" for module, paths in modules().items()
              for path in paths for target in package_imports(path) if rank(target) > rank(module)]
    assert not upward


def test_the_core_imports_without_ray_mlflow_or_optuna():
    """Enforced where it counts, in a fresh interpreter in which those packages cannot be imported at all."""
    core = sorted({"gkd_tune." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                   for p in (PACKAGE / "core").rglob("*.py")})
    code = (f"import sys\nfor name in {CORE_FREE_OF!r}: sys.modules[name] = None\n"
            f"import importlib\nfor module in {core!r}: importlib.import_module(module)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {CORE_FREE_OF!r} and sys.modules[m]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    assert len(core) >= 15  # every core module was imported, the data package's included
    # nor later, inside a function
    late = [f"{path.relative_to(PACKAGE)}: {name}" for path in (PACKAGE / "core").rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
            if name.split(".")[0] in CORE_FREE_OF]
    assert not late
