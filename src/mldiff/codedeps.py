"""The source files each pipeline step runs: the code dependencies of its Snakemake rule and
its DVC stage (one list for both tools; ``tests/test_workflow.py`` checks that dvc.yaml lists
exactly these).

A step's files are the ``mldiff`` modules that its ``cmd_<step>`` in ``cli.py`` (and ``cli.py``
at module level) imports, and transitively theirs, read statically from the source: every
import statement counts, at module level or inside functions. ``from package import name`` of a
name that the package's ``__init__.py`` re-exports follows the module that defines ``name``
(plus the ``__init__.py`` file itself), not every submodule the package imports, so a sampler
edit does not retrain. Not followed: ``cli.py`` itself (the dispatcher of every step: argument
parsing and logging) and the function-level imports of ``config.py`` (its validators look names
up in the registries; the steps import what they run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "mldiff"
PACKAGE_DIR = Path(__file__).resolve().parent
STEPS = ("simulate", "store", "reference", "train", "sample", "evaluate", "report")
# Files other than Python that a module reads at run time (package-relative).
DATA_FILES = {f"{PACKAGE}.evaluate.report": ("evaluate/templates/report.html.j2",)}


def _module_file(module: str, root: Path) -> Path | None:
    """The file of ``mldiff`` module ``module`` under the package folder ``root``."""
    parts = module.split(".")[1:]
    package = root.joinpath(*parts, "__init__.py")
    if package.is_file():
        return package
    module_file = root.joinpath(*parts[:-1], f"{parts[-1]}.py") if parts else None
    return module_file if module_file is not None and module_file.is_file() else None


def _imports(tree: ast.AST, module: str, is_package: bool, top_level_only: bool = False
             ) -> list[tuple[str, str | None]]:
    """``(module, name)`` for each ``mldiff`` import in ``tree`` (``name`` None for ``import
    module``), relative imports resolved against ``module``."""
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    found: list[tuple[str, str | None]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + is_package]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found += [(base, a.name) for a in node.names]
    return [(m, n) for m, n in found if m == PACKAGE or m.startswith(PACKAGE + ".")]


def step_modules(step: str, root: Path = PACKAGE_DIR) -> list[str]:
    """Sorted names of the modules ``step`` runs (see the module docstring)."""
    cli = ast.parse((root / "cli.py").read_text())
    funcs = [n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == f"cmd_{step}"]
    if step not in STEPS or not funcs:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    module = f"{PACKAGE}.cli"
    todo = _imports(cli, module, False, top_level_only=True) + _imports(funcs[0], module, False)
    seen: set[str] = set()  # modules followed whole
    files: set[str] = set()  # modules whose file runs (parent packages, re-exporters)
    trees: dict[str, ast.Module] = {}

    def tree(name: str) -> ast.Module | None:
        if name not in trees:
            path = _module_file(name, root)
            trees[name] = None if path is None else ast.parse(path.read_text())
        return trees[name]

    while todo:
        name, symbol = todo.pop()
        parts = name.split(".")
        files |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if symbol is not None and tree(f"{name}.{symbol}") is not None:
            name, symbol = f"{name}.{symbol}", None  # a submodule
        if symbol is not None and _module_file(name, root).name == "__init__.py":
            binding = [(m, n) for m, n in _imports(tree(name), name, True, top_level_only=True)
                       if n == symbol]
            if binding:  # re-exported: follow its source only
                todo += binding
                continue
        if name in seen or tree(name) is None:
            continue
        seen.add(name)
        is_package = _module_file(name, root).name == "__init__.py"
        todo += _imports(tree(name), name, is_package, top_level_only=name == f"{PACKAGE}.config")
    return sorted(m for m in files | seen if tree(m) is not None)


def step_files(step: str, root: Path = PACKAGE_DIR) -> list[str]:
    """The files of :func:`step_modules` and the :data:`DATA_FILES` they read, relative to the
    package folder ``root``, sorted."""
    modules = step_modules(step, root)
    files = {_module_file(m, root).relative_to(root).as_posix() for m in modules}
    return sorted(files | {f for m in modules for f in DATA_FILES.get(m, ())})


def user_module_files(modules: list[str]) -> list[str]:
    """Files of the user modules in ``pde.imports`` found relative to the working directory
    (the folder of a package, the ``.py`` file of a module); those not found there are left
    out (installed modules are not the workflow's to track)."""
    files = []
    for module in modules:
        path = Path(*module.split("."))
        if path.is_dir():
            files.append(path.as_posix())
        elif path.with_suffix(".py").is_file():
            files.append(path.with_suffix(".py").as_posix())
    return files


def sync_dvc_yaml(path: Path) -> bool:
    """Rewrite each stage's ``- src/mldiff/...`` dependency lines in dvc.yaml to
    :func:`step_files` (in place, nothing else touched); True if anything changed."""
    lines = Path(path).read_text().splitlines(keepends=True)
    out: list[str] = []
    stage = None
    for line in lines:
        name = re.fullmatch(r"  (\w+):\n", line)
        if name:
            stage = name.group(1)
        entry = re.fullmatch(r"(\s*)- src/mldiff/\S+\n", line)
        if entry is None:
            out.append(line)
        elif not (out and out[-1].lstrip().startswith("- src/mldiff/")):
            out += [f"{entry.group(1)}- src/mldiff/{f}\n" for f in step_files(stage)]
    text = "".join(out)
    changed = text != "".join(lines)
    if changed:
        Path(path).write_text(text)
    return changed


if __name__ == "__main__":  # python -m mldiff.codedeps [dvc.yaml]: after changing imports
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "dvc.yaml")
    print(f"{target}: {'updated' if sync_dvc_yaml(target) else 'already up to date'}")
