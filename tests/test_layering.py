"""The packages import in one direction (issue 17): no import cycle in onnxptq/ or runtime/, and each onnxptq
package imports only packages at its layer or before it in LAYERS. Imports inside functions count too: a lazy
import is still a dependency. A new module must be placed in LAYERS."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# onnxptq's packages and top-level modules, in the order data flows: import -> calibrate -> export -> run/verify.
# A unit may import units of its own layer or an earlier one; within a layer the package graph must be acyclic.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "atomic", "memory", "diagnostics", "onnx_graph", "images"),
    ("targets", "data", "eval"),
    ("config", "run_context"),
    ("quant",),
    ("ops",),
    ("graph",),
    ("plan",),
    ("sim",),
    ("calib",),
    ("mixed",),
    ("recon",),
    ("settings",),
    ("export",),
    ("verify",),
    ("report",),
    ("deploy",),
    ("accuracy",),
    ("api",),
    ("__init__", "cli", "__main__"),
]


def module_imports(root: Path, package: str) -> dict[str, list[tuple[str, int, str]]]:
    """module -> [(imported module, line, source text)] for every import of ``package``'s own modules in the
    tree under ``root/package`` (relative imports resolved; ``from x import y`` counts y when it is a module)."""
    base = root / package
    mods: dict[str, Path] = {}
    for p in base.rglob("*.py"):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    out: dict[str, list[tuple[str, int, str]]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    target = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    name = sub if sub in mods else target
                    if name in mods:
                        found.append((name, node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        found.append((alias.name, node.lineno, ast.unparse(node)))
        out[mod] = found
    return out


def unit_of(mod: str, package: str) -> str:
    """``onnxptq.recon.engine`` -> ``recon``; ``onnxptq`` -> ``__init__``."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def layering_errors(root: Path, package: str, layers: list[tuple[str, ...]] | None) -> list[str]:
    imports = module_imports(root, package)
    errors = []
    mod_edges = {m: {t for t, *_ in deps if t != m} for m, deps in imports.items()}
    cycle = find_cycle(mod_edges)
    if cycle:
        errors.append("module import cycle: " + " -> ".join(cycle))
    unit_edges: dict[str, set[str]] = {}
    for m, deps in imports.items():
        for t, *_ in deps:
            a, b = unit_of(m, package), unit_of(t, package)
            if a != b:
                unit_edges.setdefault(a, set()).add(b)
    cycle = find_cycle(unit_edges)
    if cycle:
        errors.append("package import cycle: " + " -> ".join(cycle))
    if layers is None:
        return errors
    level = {u: k for k, units in enumerate(layers) for u in units}
    for m in sorted(imports):
        u = unit_of(m, package)
        if u not in level:
            errors.append(f"{m} (unit {u}) is in no layer of LAYERS: place it in tests/test_layering.py")
            continue
        for t, line, text in imports[m]:
            v = unit_of(t, package)
            if v in level and level[v] > level[u]:
                errors.append(f"{m.replace('.', '/')}.py:{line}: `{text}` imports {v} (layer {level[v]}) from "
                              f"{u} (layer {level[u]}): data flows the other way")
    return errors


def test_onnxptq_imports_in_one_direction():
    errors = layering_errors(ROOT, "onnxptq", LAYERS)
    assert not errors, "\n".join(errors)


def test_runtime_has_no_import_cycle():
    errors = layering_errors(ROOT, "runtime", None)
    assert not errors, "\n".join(errors)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.parametrize("case", ["cycle", "upward", "unplaced"])
def test_the_checker_fails_on_a_bad_package(tmp_path, case):
    files = {"pk/__init__.py": "", "pk/a/__init__.py": "", "pk/b/__init__.py": "",
             "pk/a/x.py": "def f():\n    from ..b import y\n", "pk/b/y.py": "X = 1\n"}
    layers = [("__init__",), ("a",), ("b",)]
    if case == "cycle":
        files["pk/b/y.py"] = "from ..a.x import f\n"
    if case == "unplaced":
        files["pk/c.py"] = ""
        layers = [("__init__",), ("b",), ("a",)]
    _write(tmp_path, files)
    errors = layering_errors(tmp_path, "pk", layers)
    want = {"cycle": "import cycle", "upward": "data flows the other way", "unplaced": "is in no layer"}[case]
    assert any(want in e for e in errors), errors
    if case != "cycle":
        layers_ok = [("__init__",), ("b",), ("a",), ("c",)]
        assert not layering_errors(tmp_path, "pk", layers_ok)
