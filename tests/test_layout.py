"""The package layout: family knowledge only in the adapters, strategy names only in the strategies, engine
variables only in engines.py and runtime.py, no import cycles, a self-contained probe model type. Each check is a
function of the package folder, and a planted violation in a copy of the package makes it fail."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

import hf_transfer
from hf_transfer.strategies import strategy_names

PACKAGE = Path(hf_transfer.__file__).parent
FAMILY_MARKERS = ("is_timm", "TimmWrapperFor", ".timm_model", "_hf_transfer_image", "pretrained_cfg", "timm_wrapper",
                  "timm_model.")
# Outside the strategies, ask the strategy object; the advisor's decision rules may name the few they choose between.
STRATEGY_NAMES_ALLOWED = ("hf_transfer.strategies",)
MAX_STRATEGY_COMPARISONS_ELSEWHERE = 2
ENGINE_VARIABLE = re.compile(r"^(WORLD_SIZE|LOCAL_WORLD_SIZE|RANK|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|ACCELERATE_\w+|"
                             r"FSDP_\w+)$")
ENGINE_VARIABLES_ALLOWED = ("hf_transfer.engines", "hf_transfer.runtime")


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = ("hf_transfer",) + path.relative_to(package).with_suffix("").parts
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


# ------------------------------------------------------------------------------------------------- the checks
def import_cycle(package: Path = PACKAGE) -> list[str] | None:
    """One import cycle (as a path of module names), or None."""
    modules = _modules(package)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ may re-export its own submodules; a submodule importing its package back is the cycle.
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def family_markers(package: Path = PACKAGE) -> list[str]:
    """'module: marker' for every model-family marker outside backbones/."""
    return [f"{name}: {marker}" for name, path in _modules(package).items()
            if not name.startswith("hf_transfer.backbones") for marker in FAMILY_MARKERS if marker in path.read_text()]


def _is_strategy_name(node, names) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in names
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(_is_strategy_name(e, names) for e in node.elts)


def strategy_comparisons(package: Path = PACKAGE) -> list[str]:
    """'module:line' of every comparison of something named *strategy* with a strategy name, outside the modules
    allowed to."""
    names = set(strategy_names(plan_only=False))
    found = []
    for name, path in _modules(package).items():
        if name.startswith(STRATEGY_NAMES_ALLOWED):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if (any(_is_strategy_name(o, names) for o in operands)
                        and any("strategy" in ast.get_source_segment(source, o) for o in operands
                                if not _is_strategy_name(o, names))):
                    found.append(f"{name}:{node.lineno}")
    return found


def engine_variables(package: Path = PACKAGE) -> list[str]:
    """'module:line VARIABLE' for every engine environment variable named outside engines.py and runtime.py."""
    found = []
    for name, path in _modules(package).items():
        if name in ENGINE_VARIABLES_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENGINE_VARIABLE.match(node.value):
                found.append(f"{name}:{node.lineno} {node.value}")
    return found


MAX_LINES = 450  # one concern a file: past this a module is doing several jobs
MAX_LINES_OF = {"hf_transfer.trainer": 200}  # the trainer keeps only the plan wiring


def oversized_files(package: Path = PACKAGE) -> list[str]:
    """'module: N lines' for every module over its line limit."""
    found = []
    for name, path in _modules(package).items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES_OF.get(name, MAX_LINES):
            found.append(f"{name}: {lines} lines")
    return found


# -------------------------------------------------------------------------------------------------- the tests
def test_no_import_cycles():
    cycle = import_cycle()
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_library_never_imports_a_job():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(("hf_transfer.jobs", "hf_transfer.cli")):
            continue
        jobs = {t for t in _imports(name, path, modules) if t.startswith("hf_transfer.jobs")}
        assert not jobs, f"{name} imports the job(s) {jobs}"


def test_only_the_adapters_know_model_families():
    assert not family_markers(), "model-family checks outside backbones/ (ask the backbone adapter): " + ", ".join(family_markers())


def test_only_the_strategies_compare_strategy_names():
    found = strategy_comparisons()
    assert len(found) <= MAX_STRATEGY_COMPARISONS_ELSEWHERE, f"strategy names compared at {found}; ask the strategy object"


def test_only_engines_and_runtime_read_engine_variables():
    assert not engine_variables(), f"engine variables read at {engine_variables()}; ask engines.py or runtime.py"


def test_every_file_keeps_to_its_size():
    assert not oversized_files(), f"split these by concern: {oversized_files()}"


def test_probe_model_type_is_self_contained():
    path = PACKAGE / "modeling_probe.py"
    assert not _imports("hf_transfer.modeling_probe", path, _modules())
    assert "hf_transfer." not in path.read_text().replace("hf_transfer_probe", "")


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "hf_transfer"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_each_check_fails_on_a_planted_violation(package_copy):
    job = package_copy / "jobs" / "finetune.py"
    clean = job.read_text()
    assert import_cycle(package_copy) is None and not family_markers(package_copy)
    assert strategy_comparisons(package_copy) == strategy_comparisons() and not engine_variables(package_copy)

    job.write_text(clean + "\n\ndef planted(config):\n" + "    a = config.strategy == 'lp_ft'\n" * 3
                   + "    b = config.strategy in ('lora', 'scratch')\n")
    planted = [f for f in strategy_comparisons(package_copy) if f.startswith("hf_transfer.jobs.finetune:")]
    assert len(planted) == 4 and len(strategy_comparisons(package_copy)) > MAX_STRATEGY_COMPARISONS_ELSEWHERE

    job.write_text(clean + "\n\ndef planted(config):\n    return config.get('pretrained_cfg')\n")
    assert family_markers(package_copy) == ["hf_transfer.jobs.finetune: pretrained_cfg"]

    job.write_text(clean + "\n\nimport os\nPLANTED = int(os.environ.get('WORLD_SIZE', '1'))\n")
    assert [v.split(" ")[1] for v in engine_variables(package_copy)] == ["WORLD_SIZE"]

    assert not oversized_files(package_copy)
    trainer = package_copy / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n" * (201 - len(trainer.read_text().splitlines())))
    assert oversized_files(package_copy) == ["hf_transfer.trainer: 201 lines"]

    (package_copy / "errors.py").write_text((package_copy / "errors.py").read_text() + "\nfrom . import trainer  # planted\n")
    assert import_cycle(package_copy) is not None
