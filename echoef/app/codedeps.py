"""The code each DVC stage runs, from the import graph: the stage script and every ``echoef`` module
it reaches, directly or through others, with the packages on the way (grimp builds the graph: imports
inside functions and imports for type checkers included, so the lists err on the side of re-running).
``make deps`` writes these lists into dvc.yaml; a test fails when dvc.yaml's differ, so a code change
re-runs every stage it can affect.

    python -m echoef.app.codedeps dvc.yaml           # rewrite the code deps of every stage
    python -m echoef.app.codedeps dvc.yaml --check   # exit 1 and list what is missing or superfluous
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "echoef"


def _module_file(root: Path, module: str) -> str:
    """``echoef.a.b`` -> ``echoef/a/b.py`` (or ``echoef/a/b/__init__.py`` for a package)."""
    path = Path(*module.split("."))
    return str(path / "__init__.py") if (root / path).is_dir() else str(path.with_suffix(".py"))


def script_imports(script: Path) -> set[str]:
    """What a stage script imports of ``echoef`` itself (``from echoef.a import b`` gives
    ``echoef.a.b``, a module or a name in ``echoef.a``; ``import echoef.a`` gives ``echoef.a``),
    wherever in the script."""
    modules = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE or node.module.startswith(PACKAGE + "."):
                # `from echoef.io import camus` imports a module; `from echoef.io.camus import Frame` a name
                # in one (code_deps keeps whichever is a module)
                modules |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE + ".")}
    return modules


def code_deps(root: Path, script: str, graph=None) -> list[str]:
    """The files a stage running ``script`` depends on, sorted: the script, every module of the
    package it reaches through imports, and the ``__init__.py`` of every package on the way (each runs
    when a module inside it is imported)."""
    root = Path(root)
    graph = graph or build_graph(root)
    todo = []
    for module in script_imports(root / script):
        while module not in graph.modules:  # `from echoef.a import f`: f is no module
            module = module.rpartition(".")[0]
        todo.append(module)
    reached = set()
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += [*graph.find_modules_directly_imported_by(module), *_parents(module)]
    return sorted({script} | {_module_file(root, module) for module in reached})


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def build_graph(root: Path):
    """grimp's import graph of the package under ``root`` (imports in functions and for type checkers included)."""
    import grimp

    sys.path.insert(0, str(root))
    try:
        return grimp.build_graph(PACKAGE, cache_dir=None)
    finally:
        sys.path.remove(str(root))


def stage_script(stage: dict) -> str:
    """The stage script a dvc.yaml stage (or foreach template) runs: the ``stages/*.py`` in its cmd."""
    body = stage.get("do", stage)
    return next(word for word in str(body["cmd"]).split() if word.startswith("stages/") and word.endswith(".py"))


def is_code(dep: str) -> bool:
    """A dependency that is code (a stage script or a module of the package), not data or a parameter."""
    return dep.endswith(".py") and (dep.startswith("stages/") or dep.startswith(PACKAGE + "/"))


def differences(root: Path, dvc_yaml: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage whose code deps are not what the import graph says: (missing, superfluous)."""
    graph = build_graph(root)
    found = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        wanted = set(code_deps(root, stage_script(stage), graph))
        listed = {str(dep) for dep in body.get("deps", []) if is_code(str(dep))}
        if wanted != listed:
            found[name] = (sorted(wanted - listed), sorted(listed - wanted))
    return found


def rewrite(path: Path) -> list[str]:
    """dvc.yaml at ``path`` with each stage's code deps replaced by the import graph's (its other deps,
    its comments and layout kept); returns the names of the stages changed."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(path.read_text())
    root = path.parent
    graph = build_graph(root)
    changed = []
    for name, stage in document["stages"].items():
        body = stage.get("do", stage)
        wanted = code_deps(root, stage_script(stage), graph)
        deps = body["deps"]
        current = [str(dep) for dep in deps]
        if {d for d in current if is_code(d)} == set(wanted):
            continue
        first_code = next((i for i, dep in enumerate(deps) if is_code(str(dep))), len(deps))
        # Deps listed before the code (data/params.ok) stay first; the code follows, sorted; then the data.
        head = list(deps[:first_code])
        tail = [dep for dep in deps[first_code:] if not is_code(str(dep))]
        deps.clear()
        deps.extend(head + wanted + tail)
        changed.append(name)
    with open(path, "w") as handle:
        yaml.dump(document, handle)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoef.app.codedeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("dvc_yaml", type=Path)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any stage's list is wrong")
    args = parser.parse_args(argv)
    if args.check:
        import yaml

        found = differences(args.dvc_yaml.parent, yaml.safe_load(args.dvc_yaml.read_text()))
        for name, (missing, superfluous) in found.items():
            print(f"{name}: missing {missing or '-'}; superfluous {superfluous or '-'}")
        return 1 if found else 0
    changed = rewrite(args.dvc_yaml)
    print(f"codedeps: {len(changed)} stage(s) rewritten in {args.dvc_yaml}" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
