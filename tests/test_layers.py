"""The package's import arrows run one way: a module imports only from its own layer or the layers below it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gkd_tune"
# Bottom to top, in the order data flows (see docs/method.md, "Code layout").
LAYERS = [
    # file names and I/O, the parameter schema, the sweep's shared folder, errors as one line
    {"files", "params", "storage", "errors"},
    {"data"},
    {"models"},
    {"schedules", "sinkhorn", "losses"},
    {"distill"},
    {"loop"},
    {"teacher"},
    {"space"},
    {"strategy", "tracking", "report", "preflight", "resume"},  # search + early stopping; MLflow; summary; checks
    {"runtime"},  # Ray as the commands use it
    {"train", "trainable"},
    {"engine"},  # the run engine under search and reproduce
    {"search", "reproduce", "doctor"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def package_imports(path: Path) -> set[str]:
    """gkd_tune modules imported anywhere in the file (function-level imports included), as 'data', 'space', ..."""
    inside = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = inside[: len(inside) - node.level]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                found.add(target[0])
            else:  # `from . import x` at the package's top
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gkd_tune."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("gkd_tune."))
    return found


def test_every_module_has_a_layer():
    modules = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    modules.discard("__init__")
    assert modules == set().union(*LAYERS)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        upward += [f"{path.relative_to(PACKAGE)} imports {target}" for target in package_imports(path)
                   if target != here and layer_of(target) > layer_of(here)]
    assert not upward
