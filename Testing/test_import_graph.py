"""The direction of MedFusionLib's dependencies (issue #21), read from the source with ``ast``.

- The engine never imports the command line: only ``commands/`` and ``cli.py`` import
  ``MedFusionLib.commands``.
- No import cycle among MedFusionLib's modules.
- ``import MedFusionLib`` loads none of the heavy optional packages (torch, PyWavelets, Dask,
  matplotlib, nilearn), and no module imports one except through :mod:`MedFusionLib.optional`
  or as a module built on it (``nets``' networks and losses, ``training``).
- Imports sit at the top of a file: a function body imports only what Python cannot import at
  the top (only the pydicom version shim does).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "MedFusionLib"
HEAVY = ("torch", "pywt", "dask", "distributed", "matplotlib", "nilearn")
#: Modules built on torch: they import it at their top and are reached only through
#: ``optional.lazy(..., needs="torch")`` or by ``medfusion train``.
TORCH_MODULES = {"MedFusionLib.nets.fusionnet", "MedFusionLib.nets.losses", "MedFusionLib.nets.inference",
                 "MedFusionLib.nets.pair_losses", "MedFusionLib.training", "MedFusionLib.training_atlas"}
#: Version shims: what they import depends on the installed pydicom (2.4 or 3.x).
VERSION_SHIMS = {"MedFusionLib.dicom.compat"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.AST) -> list[str]:
    """The modules an import statement names (``from . import x`` names ``pkg.x`` when it is a
    module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return subs if subs and not node.module else [target] + subs


def _imports(module: str) -> list[tuple[ast.AST, list[str], bool]]:
    """``(node, targets, in_function)`` of every import statement of ``module``."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = set()
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return [(n, _targets(module, is_pkg, n), id(n) in in_function)
            for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        graph[module] = {t for _, targets, _ in _imports(module) for t in targets if t in MODULES}
    return graph


def test_the_engine_never_imports_the_command_line():
    offenders = []
    for module in MODULES:
        if module.startswith("MedFusionLib.commands") or module == "MedFusionLib.cli":
            continue
        for node, targets, _ in _imports(module):
            if any(t == "MedFusionLib.commands" or t.startswith("MedFusionLib.commands.")
                   for t in targets):
                offenders.append(f"{module}:{node.lineno}")
    assert offenders == [], f"engine modules importing MedFusionLib.commands: {offenders}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_medfusionlib_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_heavy_packages_only_through_the_optional_accessor():
    offenders = []
    for module in MODULES:
        if module in TORCH_MODULES or module == "MedFusionLib.optional":
            continue
        for node, targets, _ in _imports(module):
            if any(t.split(".")[0] in HEAVY for t in targets):
                offenders.append(f"{module}:{node.lineno} imports {targets[0]}")
    assert offenders == [], ("import these through MedFusionLib.optional (lazy/require): "
                             f"{offenders}")


def test_imports_sit_at_the_top_of_files():
    offenders = []
    for module in MODULES:
        if module in VERSION_SHIMS:
            continue
        for node, targets, in_function in _imports(module):
            if in_function:
                offenders.append(f"{module}:{node.lineno} ({targets[0]})")
    assert offenders == [], f"imports inside function bodies: {offenders}"


@pytest.mark.parametrize("statement", [
    "import MedFusionLib",
    "import MedFusionLib.job, MedFusionLib.cohort, MedFusionLib.executors, MedFusionLib.report",
    "import MedFusionLib.cli; MedFusionLib.cli.build_parser()",
    "import MedFusionLib as mf; mf.list_methods(details=True); mf.default_method()",
])
def test_importing_the_engine_loads_no_heavy_package(statement):
    code = (f"import sys; {statement}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"{statement} loaded {r.stdout.strip()}"


def test_a_package_another_thread_is_importing_is_waited_for(tmp_path):
    """optional.require on a module that another thread is still importing waits for it (Python's
    import lock) instead of handing out the half-initialised module: the pair job imports torch
    on a background thread while the fusion may already ask for it."""
    (tmp_path / "pywt").mkdir()
    (tmp_path / "pywt" / "__init__.py").write_text("import time\ntime.sleep(1.0)\nREADY = 'yes'\n")
    code = ("import sys, threading, time\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "from MedFusionLib import optional\n"
            "threading.Thread(target=optional.problem, args=('pywt',)).start()\n"
            "time.sleep(0.3)\n"
            "print(optional.lazy('pywt').READY)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "yes"
