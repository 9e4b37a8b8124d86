"""Dependencies run one way (DESIGN.md): configs <- rewards <- environments <- rollout <- learner <- the app
(`temper/`). Read from the source with `ast`, imports inside functions included: a lazy import is still a
dependency, only a later one. Two rules: no library module imports the app layer, and no module imports
itself back through others (a cycle)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("configs", "rewards", "environments", "rollout", "learner")
"""The library packages, in dependency order; each imports as temper.<name>."""


def module_name(path: Path) -> str:
    """temper.<dotted> for a file of the project: a library folder maps to temper.<folder>, temper/ to temper."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "temper" else ["temper", *parts])


def project_modules() -> dict[str, Path]:
    files = [p for top in (*LIBRARY, "temper") for p in (REPO / top).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` (module `name`) imports, anywhere in it. `from a import b` counts as a.b when
    that is a module, else as a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import temper.rollout.types as t` -> the module itself
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def is_app(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "temper" and (len(parts) == 1 or parts[1] not in LIBRARY)


def layer_of(module: str) -> str:
    return module.split(".")[1] if not is_app(module) else "app"


def test_no_library_module_imports_the_app_layer():
    bad = sorted(f"{m} imports {t}" for m, ts in graph().items() if not is_app(m) for t in ts
                 if is_app(t) and t != "temper")  # `temper` itself: the namespace package's docstring, nothing else
    assert not bad, "library modules reaching up into temper/:\n" + "\n".join(bad)


def test_library_packages_import_only_those_below_them():
    order = {name: i for i, name in enumerate(LIBRARY)}
    bad = sorted(f"{m} imports {t}" for m, ts in graph().items() if not is_app(m) for t in ts
                 if not is_app(t) and order[layer_of(t)] > order[layer_of(m)])
    assert not bad, "imports against configs <- rewards <- environments <- rollout <- learner:\n" + "\n".join(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycles_finds_a_cycle_and_only_that():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_project():
    found = cycles(graph())
    assert not found, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_graph_sees_lazy_and_relative_imports():
    """The reader itself: learner.py imports rollout.affinity inside a method; the layering holds because it
    is a library module."""
    g = graph()
    assert "temper.rollout.affinity" in g["temper.learner.learner"]
    assert "temper.configs.schema" in g["temper.rollout.affinity"]
