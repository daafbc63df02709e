"""The package layout: family knowledge only in the adapters, no import cycles, a self-contained probe model type."""

from __future__ import annotations

import ast
from pathlib import Path

import hf_transfer

PACKAGE = Path(hf_transfer.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """hf_transfer modules that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            for alias in node.names:
                full = f"{stem}.{alias.name}"
                targets.add(full if full in modules else stem)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return {t for t in targets if t in modules and t != "hf_transfer" and t != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ may re-export its own submodules; a submodule importing its package back is the cycle.
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_library_never_imports_a_job():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(("hf_transfer.jobs", "hf_transfer.cli")):
            continue
        jobs = {t for t in _imports(name, path, modules) if t.startswith("hf_transfer.jobs")}
        assert not jobs, f"{name} imports the job(s) {jobs}"


def test_only_the_adapters_know_model_families():
    for name, path in _modules().items():
        if name.startswith("hf_transfer.backbones"):
            continue
        source = path.read_text()
        for marker in ("is_timm", "TimmWrapperFor", ".timm_model", "_hf_transfer_image"):
            assert marker not in source, f"{name} checks the model family ({marker}); ask the backbone adapter"


def test_probe_model_type_is_self_contained():
    path = PACKAGE / "modeling_probe.py"
    assert not _imports("hf_transfer.modeling_probe", path, _modules())
    assert "hf_transfer." not in path.read_text().replace("hf_transfer_probe", "")
