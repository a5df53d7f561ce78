"""Structural guards over dtrain/: the layering, size and naming rules of docs/architecture.md.

Everything here reads the source with ``ast`` (nothing under dtrain/ is imported), so a broken module
cannot hide a violation and the checks cost well under a second. The rules themselves are stated once,
in docs/architecture.md; the tables below are their executable form: change both together.

How imports are counted (the import graph):
- every ``import`` and ``from ... import`` in a module, including the ones inside functions (a lazy
  import still couples the two modules; it only hides the cycle from Python);
- relative imports are resolved against the importing module's package;
- ``from pkg import name`` counts as importing the submodule ``pkg.name`` when that module exists,
  otherwise as importing ``pkg`` itself; an import of a dtrain module that does not exist is no edge
  (test_every_dtrain_import_resolves reports it);
- imports under ``if TYPE_CHECKING:`` are ignored: they never run, so they couple no behaviour;
- importing ``a.b.c`` makes Python run ``a/__init__`` and ``a/b/__init__`` first; those implicit parent
  imports are not edges (otherwise every module would depend on every package facade above it).
"""

from __future__ import annotations

import ast
import itertools
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dtrain"

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60

# ------------------------------------------------------------------------------------------------
# The layers. A module's layer is its first name under dtrain (dtrain.nn.layers.linear -> "nn");
# the package facade dtrain/__init__.py is the layer "dtrain". A layer may import itself and the layers
# listed here, nothing else. Bottom-up: env, spec <- backend <- autograd <- nn <- optim; data needs only
# backend; models are compositions of nn layers; distributed may use everything below train but knows
# nothing of models; train composes; launch, bench and cli sit on top.
# ------------------------------------------------------------------------------------------------
_BASE = frozenset({"env", "spec", "files"})
_CORE = _BASE | {"backend", "autograd", "nn", "optim", "data"}
_FACADE = _CORE | {"models"}
_BELOW_TRAIN = _FACADE | {"distributed", "dtrain"}
MAY_IMPORT: dict[str, frozenset[str]] = {
    "env": frozenset(),
    "spec": frozenset(),
    "files": frozenset(),  # reading user-named files safely: regular files only, size limits, guarded parsers
    "threads": frozenset({"env", "spec"}),  # sizes BLAS/OpenMP pools from what env says; only the top layers call it
    "backend": _BASE,
    "autograd": _BASE | {"backend"},
    "nn": _BASE | {"backend", "autograd"},
    "optim": _BASE | {"backend", "autograd", "nn"},
    "data": _BASE | {"backend"},
    "models": _BASE | {"backend", "autograd", "nn"},
    "dtrain": _FACADE,  # `import dtrain as dt` gives the tensor API, nn, optim, data and models
    "distributed": _CORE,
    "train": _BELOW_TRAIN | {"threads"},
    "launch": _BELOW_TRAIN | {"train", "threads"},
    "cluster": frozenset({"env", "spec", "launch"}),  # namespaces, links, MPICH placement: no model, no MPI import
    "elastic": frozenset({"env", "spec", "launch", "cluster", "train"}),  # supervises jobs: relaunches, no model
    "bench": _BELOW_TRAIN | {"train", "launch", "threads", "cluster"},
    "cli": _BELOW_TRAIN | {"train", "launch", "bench", "threads", "cluster", "elastic"},
    "__main__": frozenset({"cli"}),
}

# The one import cycle we accept: autograd's core. A Tensor's methods are the ops, every op builds a
# Tensor through Function.apply, Tensor.backward runs the engine, and autocast casts the inputs of the
# ops that run in low precision; the modules import each other lazily (inside functions or at the bottom
# of a file) so that Python can load them. The core is these modules plus everything in the ops package
# (a new op file joins the cycle by construction); any import cycle must lie inside it.
AUTOGRAD_CORE_MODULES = frozenset({
    "dtrain.autograd.tensor",
    "dtrain.autograd.function",
    "dtrain.autograd.engine",
    "dtrain.autograd.autocast",
    "dtrain.autograd.ops",
})
AUTOGRAD_CORE_PACKAGE = "dtrain.autograd.ops."


def _in_autograd_core(module: str) -> bool:
    return module in AUTOGRAD_CORE_MODULES or module.startswith(AUTOGRAD_CORE_PACKAGE)


# Functions allowed past MAX_FUNCTION_LINES: declarative tables only, as "file::function": "the reason"
# (e.g. "dtrain/x.py::table": "one row per op, no logic"). Empty today: the last entry, cli.build_parser,
# was split per subcommand. An entry that no longer exists or no longer needs the exemption fails
# test_function_allowlist_is_current, so the list cannot go stale.
LONG_FUNCTION_ALLOWLIST: dict[str, str] = {}

# Where __dict__ may be written: nn.Module's own registration machinery (it keeps parameters, buffers and
# submodules in the instance dict so attribute reads on the hot path are plain lookups).
DICT_WRITES_ALLOWED = frozenset({"dtrain/nn/module.py"})

# The only files that may import torch, and only inside functions: a benchmark's peer, measured in the
# same run when torch is installed (the library itself never needs it).
TORCH_PEERS: dict[str, str] = {
    "dtrain/bench/peers.py": "PyTorch (DDP over gloo) is the peer the throughput benchmark measures against",
}

# Top-level tests/test_X.py files that are not about one dtrain module: end-to-end checks of the whole
# command line, or of the repository itself (docker/, k8s/ are checked by test_docker.py, test_k8s.py).
# The layering itself, and the bad inputs the whole CLI must turn into one line (flags, files, data, ranks).
CROSS_CUTTING_TESTS = frozenset({"test_architecture.py", "test_bad_inputs.py", "test_fuzz_inputs.py"})


# ------------------------------------------------------------------------------------------------
# Reading the source
# ------------------------------------------------------------------------------------------------
def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under node, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _owning_module(name: str) -> str | None:
    """The longest prefix of the dotted name that is a dtrain module (None outside dtrain)."""
    mods = _modules()
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in mods:
            return candidate
    return None


def _resolve_from(module: str, node: ast.ImportFrom) -> str:
    """The absolute dotted name `from <node.module>` refers to, seen from `module`."""
    if node.level == 0:
        return node.module or ""
    is_package = _modules()[module].name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names one import statement asks for: a module, or `pkg.name` for `from pkg import name`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve_from(module, node)
    mods = _modules()
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]


def _imports_of(module: str) -> list[tuple[int, str]]:
    """(line, imported dtrain module) for every import in the module that names an existing dtrain
    module, in source order (test_every_dtrain_import_resolves reports the others)."""
    mods = _modules()
    found = []
    for node in _import_nodes(_tree(mods[module])):
        found += [(node.lineno, t) for t in _targets(module, node) if t in mods and t != module]
    return found


@cache
def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    graph: dict[str, dict[str, int]] = {}
    for module in _modules():
        edges: dict[str, int] = {}
        for line, target in _imports_of(module):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _cycle_through(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One shortest cycle inside the component, as 'file:line module' steps, for the failure message."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first from start until an edge leads back to it
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    path.reverse()
                    steps = [*path, start]
                    return [f"{_rel(_modules()[a])}:{graph[a][b]} imports {b}" for a, b in itertools.pairwise(steps)]
                if child in members and child not in parent and child != start:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle found through {start} in {component}")


def _functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(file, function node) for every function and method in dtrain/, nested ones included."""
    for path in _modules().values():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield _rel(path), node


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


# ------------------------------------------------------------------------------------------------
# a. the import graph
# ------------------------------------------------------------------------------------------------
def test_import_graph_is_read():
    # The guards below are only as good as the graph: check it sees the imports we know are there,
    # including a relative `from .. import submodule` and an import inside a function.
    graph = _graph()
    assert len(graph) > 50, f"only {len(graph)} modules found under {PKG}"
    assert "dtrain.backend" in graph["dtrain.autograd.tensor"]
    assert "dtrain.autograd.tensor" in graph["dtrain.nn.module"]
    assert "dtrain.cli" in graph["dtrain.__main__"]
    lazy = [(m, t) for m in graph for line, t in _imports_of(m)
            if any(isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.lineno < line <= f.end_lineno
                   for f in ast.walk(_tree(_modules()[m])))]
    assert lazy, "no import inside a function was found: the walker misses nested imports"


def test_every_dtrain_import_resolves():
    # An import of a dtrain module that does not exist (a stale name after a move) is a latent
    # ImportError, and would hide an edge from the checks below.
    mods = _modules()
    problems = []
    for module, path in mods.items():
        for node in _import_nodes(_tree(path)):
            problems += [f"{_rel(path)}:{node.lineno} imports {t}: no such module" for t in _targets(module, node)
                         if t.split(".")[0] == "dtrain" and t not in mods]
    assert not problems, "imports of missing dtrain modules:\n" + "\n".join(problems)


def test_no_import_cycles_outside_autograd_core():
    graph = _graph()
    problems = []
    for component in _strongly_connected(graph):
        outside = [m for m in component if not _in_autograd_core(m)]
        if outside:
            problems.append(f"cycle among {component} (outside autograd's core: {outside}):\n    "
                            + "\n    ".join(_cycle_through(graph, component)))
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_autograd_core_cycle_is_what_the_allowlist_says():
    # The allowance is for the cycle that exists, not a blanket pass: every allowed module really is
    # in one cycle together (if the core stops being cyclic, shrink the set).
    components = [c for c in _strongly_connected(_graph()) if any(map(_in_autograd_core, c))]
    assert len(components) == 1, f"expected autograd's core to be one import cycle, found {components}"
    unused = AUTOGRAD_CORE_MODULES - set(components[0])
    assert not unused, f"AUTOGRAD_CORE_MODULES lists modules that are in no cycle: {sorted(unused)}; remove them"


def test_layers_import_only_downwards():
    graph = _graph()
    problems = []
    for module, edges in sorted(graph.items()):
        layer = _layer(module)
        if layer not in MAY_IMPORT:
            problems.append(f"{_rel(_modules()[module])}: layer {layer!r} is not in MAY_IMPORT: add it to "
                            f"tests/test_architecture.py and docs/architecture.md")
            continue
        allowed = MAY_IMPORT[layer] | {layer}
        for target, line in sorted(edges.items(), key=lambda e: e[1]):
            if _layer(target) not in allowed:
                problems.append(f"{_rel(_modules()[module])}:{line} imports {target}: layer {layer!r} may import "
                                f"only {sorted(allowed)}")
    assert not problems, "wrong-direction imports:\n" + "\n".join(problems)


def test_named_direction_rules_hold_in_the_table():
    # The rules the issue names, checked against the table itself so that loosening MAY_IMPORT
    # cannot silently drop one of them.
    for low in ("autograd", "nn", "optim", "data"):
        assert not MAY_IMPORT[low] & {"distributed", "train", "cli", "bench", "launch"}, low
    assert not MAY_IMPORT["distributed"] & {"train", "cli", "bench", "launch", "models"}
    assert MAY_IMPORT["env"] == MAY_IMPORT["spec"] == MAY_IMPORT["files"] == frozenset()
    assert MAY_IMPORT["data"] <= {"env", "spec", "files", "backend"}


def test_env_spec_and_files_import_nothing_from_dtrain():
    graph = _graph()
    problems = [f"{_rel(_modules()[m])}:{line} imports {t}"
                for m in graph if _layer(m) in ("env", "spec", "files") for t, line in graph[m].items()]
    assert not problems, "dtrain.env, dtrain.spec and dtrain.files are the bottom layer:\n" + "\n".join(problems)


def _private_uses(module: str, tree: ast.Module) -> list[str]:
    """Where a module uses another layer's private names: `from x import _private`, a private module
    (`x._util`), or `alias._attr` on a dtrain module imported from another layer."""
    mods = _modules()
    problems = []
    aliases: dict[str, str] = {}  # local name -> dtrain module it is bound to
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: t for a in node.names if a.asname and (t := _owning_module(a.name))})
            continue
        base = _resolve_from(module, node)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = full if full in mods else _owning_module(base)
            if target is None or _layer(target) == _layer(module):
                continue
            private = [p for p in full.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                problems.append(f"{node.lineno} imports {full} (private {private[0]!r})")
            if full in mods:
                aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _layer(aliases[node.value.id]) != _layer(module)
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return problems


def test_no_private_names_across_layers():
    # A layer uses another layer's public API only; within a layer, private helpers are shared freely.
    problems = [f"{_rel(path)}:{use}" for module, path in _modules().items()
                for use in _private_uses(module, _tree(path))]
    assert not problems, "private names used across layers:\n" + "\n".join(problems)


def test_private_use_detector_sees_every_form():
    source = """
from .distributed import comm as dist_comm
from .train import job
from .cli import _helper
import dtrain.distributed.comm as c
from .models import _as_widths
from .nn.layers import _util

def f():
    from .distributed.comm import current_world
    return dist_comm._world, c._MPI, job.run, current_world, _helper
"""
    assert _private_uses("dtrain.cli", ast.parse(source)) == [
        "6 imports dtrain.models._as_widths (private '_as_widths')",
        "7 imports dtrain.nn.layers._util (private '_util')",
        "11 reads dtrain.distributed.comm._world",
        "11 reads dtrain.distributed.comm._MPI",
    ]


def _top_level_lines(tree: ast.Module) -> set[int]:
    """Lines of the statements that run at import time (not inside a function)."""
    nested = {n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    return {n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt) and n not in nested}


def test_dtrain_never_imports_torch():
    problems = []
    for path in _modules().values():
        tree = _tree(path)
        eager = _top_level_lines(tree)
        for node in _import_nodes(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if not any(n.split(".")[0] == "torch" for n in names):
                continue
            if _rel(path) in TORCH_PEERS and node.lineno not in eager:
                continue  # the measured peer, imported only when that benchmark runs
            problems.append(f"{_rel(path)}:{node.lineno} imports {', '.join(names)}")
    assert not problems, "torch is only a test oracle (and a benchmark's peer):\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# b. sizes and __dict__ writes
# ------------------------------------------------------------------------------------------------
def test_no_file_over_500_lines():
    long = [f"{_rel(p)}: {n} lines" for p in _modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines (split by concept):\n" + "\n".join(long)


def test_no_function_over_60_lines():
    long = [f"{file}:{fn.lineno} {fn.name}: {_length(fn)} lines" for file, fn in _functions()
            if _length(fn) > MAX_FUNCTION_LINES and f"{file}::{fn.name}" not in LONG_FUNCTION_ALLOWLIST]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_function_allowlist_is_current():
    lengths: dict[str, int] = {}
    for file, fn in _functions():
        key = f"{file}::{fn.name}"
        lengths[key] = max(lengths.get(key, 0), _length(fn))
    stale = [f"{key}: " + (f"now {lengths[key]} lines" if key in lengths else "no such function")
             for key in LONG_FUNCTION_ALLOWLIST if lengths.get(key, 0) <= MAX_FUNCTION_LINES]
    assert not stale, "LONG_FUNCTION_ALLOWLIST entries no longer needed (remove them):\n" + "\n".join(stale)
    assert all(reason.strip() for reason in LONG_FUNCTION_ALLOWLIST.values())


def _is_dict_of_object(node: ast.AST) -> bool:
    """`x.__dict__` or `vars(x)`."""
    return (isinstance(node, ast.Attribute) and node.attr == "__dict__") or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars" and node.args)


_MUTATORS = frozenset({"__setitem__", "__delitem__", "update", "setdefault", "pop", "popitem"})
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _scope_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one scope: its body without the bodies of the functions and classes nested in it."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, _SCOPES):
            yield from _scope_nodes(child)


def _dict_writes(tree: ast.Module) -> list[int]:
    """Lines that write into an object's __dict__: `x.__dict__[k] = v`, `del x.__dict__[k]`,
    `x.__dict__.update(...)` (and setdefault, __setitem__, pop), the same through `vars(x)`, and the same
    through a name bound to it in the same scope (`d = x.__dict__`). Reads (`x.__dict__.get(k)`, `d[k]`)
    are fine."""
    lines = set()
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, _SCOPES))]:
        nodes = list(_scope_nodes(scope))
        aliases = {t.id for n in nodes if isinstance(n, ast.Assign) and _is_dict_of_object(n.value)
                   for t in n.targets if isinstance(t, ast.Name)}

        def is_dict(node: ast.AST, aliases=aliases) -> bool:
            return _is_dict_of_object(node) or (isinstance(node, ast.Name) and node.id in aliases)

        for node in nodes:
            targets = []
            if isinstance(node, (ast.Assign, ast.Delete)):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            if any(isinstance(t, ast.Subscript) and is_dict(t.value) for t in targets) or (
                    isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _MUTATORS and is_dict(node.func.value)):
                lines.add(node.lineno)
    return sorted(lines)


def test_dict_writes_only_in_module_machinery():
    problems = [f"{_rel(p)}:{line}" for p in _modules().values() if _rel(p) not in DICT_WRITES_ALLOWED
                for line in _dict_writes(_tree(p))]
    assert not problems, ("__dict__ writes outside nn.Module's machinery (use plain attributes, or a real "
                          "field for a cache):\n" + "\n".join(problems))


def test_dict_write_detector_sees_every_form():
    # The detector itself, on a sample of each form it must catch and each read it must let pass.
    source = '''
def f(obj, other):
    obj.__dict__["a"] = 1
    del obj.__dict__["b"]
    obj.__dict__.update(c=3)
    vars(obj)["d"] = 4
    d = obj.__dict__
    d["e"] += 5
    obj.__dict__.setdefault("f", {})
    other.__dict__.__setitem__("g", 7)
    x = obj.__dict__.get("h")
    y = d["i"]
    return x, y

def g(d):
    d["j"] = 1  # another scope's `d`: a plain dict
'''
    assert _dict_writes(ast.parse(source)) == [3, 4, 5, 6, 8, 9, 10]


# ------------------------------------------------------------------------------------------------
# c. ruff lints the distributed package (a folder named `dist` was skipped as build output)
# ------------------------------------------------------------------------------------------------
def test_ruff_lints_every_python_file():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    run = subprocess.run([ruff, "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"ruff check --show-files failed ({run.returncode}):\n{run.stderr}"
    listed = {Path(line.strip()).resolve() for line in run.stdout.splitlines() if line.strip().endswith(".py")}
    for folder in (PKG / "distributed", ROOT / "tests" / "distributed"):
        expected = {p.resolve() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}
        assert expected, f"no Python files under {folder}"
        missing = sorted(_rel(p) for p in expected - listed)
        assert not missing, f"`ruff check .` skips {len(missing)} files under {_rel(folder)}: {missing[:10]}"
    ours = {p.resolve() for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(_rel(p) for p in ours - listed)
    assert not missing, f"`ruff check .` skips files of the package: {missing[:10]}"


# ------------------------------------------------------------------------------------------------
# d. names and test layout
# ------------------------------------------------------------------------------------------------
def _public_classes(layer: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for module, path in _modules().items():
        if _layer(module) == layer:
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    found.setdefault(node.name, []).append(f"{_rel(path)}:{node.lineno}")
    return found


def test_autograd_functions_and_nn_modules_have_distinct_names():
    # A fused autograd Function named like an nn Module (`Linear`, `Conv2d`) reads as the layer in a
    # traceback or a profile; fused Functions carry their own names.
    autograd, nn = _public_classes("autograd"), _public_classes("nn")
    clashes = [f"{name}: {autograd[name]} and {nn[name]}" for name in sorted(autograd.keys() & nn.keys())]
    assert not clashes, "class names defined in both dtrain/autograd and dtrain/nn:\n" + "\n".join(clashes)


def test_distributed_sampler_is_defined_once_in_data():
    defs = [f"{_rel(p)}:{n.lineno}" for p in _modules().values() for n in ast.walk(_tree(p))
            if isinstance(n, ast.ClassDef) and n.name == "DistributedSampler"]
    assert len(defs) == 1 and defs[0].startswith("dtrain/data/"), (
        f"DistributedSampler must be defined once, in dtrain/data (others re-export it); defined at {defs}")


def test_tests_mirror_the_package():
    tests = ROOT / "tests"
    subpackages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    problems = [f"tests/{d.name}/ holds tests but dtrain/{d.name}/ is no package"
                for d in sorted(tests.iterdir()) if d.is_dir() and any(d.rglob("test_*.py"))
                and d.name not in subpackages]
    for path in sorted(tests.glob("test_*.py")):
        stem = path.stem.removeprefix("test_")
        if path.name in CROSS_CUTTING_TESTS or (PKG / f"{stem}.py").exists() or (ROOT / stem).is_dir():
            continue
        problems.append(f"tests/{path.name}: no dtrain/{stem}.py nor {stem}/ in the repository; move it to the "
                        "folder of the package it tests, or list it in CROSS_CUTTING_TESTS with why")
    assert not problems, "tests/ must mirror dtrain/:\n" + "\n".join(problems)
