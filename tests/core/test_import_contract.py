"""The layering of ``ofgr_core`` (README "Layout"): a subpackage imports only from its own layer or below, and
no two modules import each other, directly or through others, at import time or at call time.

Read from the source (every ``import`` statement, including those inside functions and ``TYPE_CHECKING``
blocks), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ofgr_core

CORE = Path(ofgr_core.__file__).parent

# Bottom to top. A module belongs to the longest prefix listed here; it may import modules of its own layer and
# of any layer below, never above.
LAYERS: list[set[str]] = [
    {"common"},  # errors, registry, atomic writes, text I/O, disk, env, GPU probe
    {"config"},  # the strict schema
    {"runs"},  # run folder, lock, events, event log, checkpoints, compute accounting
    {"data", "losses", "samplers", "train.optim", "train.guard", "train.ddp"},
    {"models"},  # the encoder contract, the factory, one folder per family
    {"embedding"},  # embed, feature cache
    {"retrieval"},  # index, evaluate, metrics, text -> image, query
    {"train"},  # the loop and fit strategies (validation uses retrieval)
    {"hierarchy", "reports"},
    {"workflows"},  # pipeline, bench, demo
    {"cli"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(CORE.rglob("*.py"))}


def _imports(mod: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every ofgr_core module ``mod`` imports (``from pkg import submodule`` counts as the submodule)."""
    out: set[str] = set()
    is_pkg = (CORE.parent / mod.replace(".", "/") / "__init__.py").exists()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ofgr_core")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if not base.startswith("ofgr_core"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != mod}


def _layer(mod: str) -> int:
    rel = mod.removeprefix("ofgr_core").lstrip(".")
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (rel == name or rel.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, f"{mod} belongs to no layer: add its package to LAYERS (and to README's Layout)"
    return best


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    known = set(trees)
    return {m: _imports(m, t, known) for m, t in trees.items()}


def test_every_subpackage_has_a_layer() -> None:
    for mod in _graph():
        if mod != "ofgr_core":
            _layer(mod)


def test_no_upward_imports() -> None:
    bad = []
    for mod, deps in _graph().items():
        if mod == "ofgr_core":
            continue
        for dep in deps:
            if _layer(dep) > _layer(mod):
                bad.append(f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_graph()) == []


def _unit(mod: str) -> str:
    """The ``LAYERS`` entry a module belongs to (its subpackage, or a module listed on its own)."""
    rel = mod.removeprefix("ofgr_core").lstrip(".")
    names = [n for layer in LAYERS for n in layer if rel == n or rel.startswith(n + ".")]
    return max(names, key=len)


def test_no_import_cycles_between_subpackages() -> None:
    units: dict[str, set[str]] = {}
    for mod, deps in _graph().items():
        if mod != "ofgr_core":
            units.setdefault(_unit(mod), set()).update(_unit(d) for d in deps if _unit(d) != _unit(mod))
    assert _cycles(units) == []


def test_the_checks_catch_what_they_guard() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _layer("ofgr_core.train.loop") > _layer("ofgr_core.retrieval.evaluate") > _layer("ofgr_core.models.base")
    assert _layer("ofgr_core.models.clip.pretrain") < _layer("ofgr_core.embedding.features")
    tree = ast.parse("def f():\n    from ofgr_core.workflows import pipeline\n")
    assert _imports("ofgr_core.common.errors", tree, {"ofgr_core.workflows.pipeline"}) == {
        "ofgr_core.workflows.pipeline"
    }
