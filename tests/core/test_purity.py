"""The core stays pure: standard library only, and no module of it reads a clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import flowstate.core

CORE_DIR = Path(flowstate.core.__file__).parent
MODULES = sorted(CORE_DIR.glob("*.py"))


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names.append(node.module or "")
    return names


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    assert len(MODULES) >= 9
    for path in MODULES:
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = top in sys.stdlib_module_names or name.startswith("flowstate.core")
            assert allowed, f"{path.name} imports {name}"
            assert top not in {"asyncio", "logging"}, f"{path.name} imports {name}"


def test_no_core_module_reads_a_clock() -> None:
    for path in MODULES:
        source = path.read_text()
        reads_clock = any(call in source for call in ("now(", "utcnow(", "time.time(", "today("))
        assert not reads_clock, path.name


def test_exported_names() -> None:
    assert sorted(flowstate.core.__all__) == sorted(
        [
            "BUILTIN_DEFINITIONS",
            "DISCOVERY",
            "FLOW_TRANSITIONS",
            "PHASE_PROGRESS_FACTORS",
            "PHASE_TRANSITIONS",
            "RETRYABLE_ERROR_CODES",
            "CancelFlow",
            "Command",
            "Context",
            "Decision",
            "DefinitionError",
            "ErrorCode",
            "Flow",
            "FlowDefinition",
            "FlowStateError",
            "FlowStatus",
            "HistoryEntry",
            "HistoryKind",
            "PauseFlow",
            "Phase",
            "PhaseDefinition",
            "PhaseError",
            "PhaseState",
            "RecoveryAction",
            "RecoveryOption",
            "ResumeFlow",
            "Retry",
            "Rollback",
            "SkipPhase",
            "Tenant",
            "TransitionPhase",
            "UpdatePhaseProgress",
            "apply_command",
            "calculate_progress",
            "create_flow",
            "definition_from_dict",
            "definition_to_dict",
            "determine_flow_status",
            "get_recovery_options",
            "validate_command",
            "validate_definition",
            "validate_flow_status_transition",
        ]
    )
    for name in flowstate.core.__all__:
        assert hasattr(flowstate.core, name), name


def test_every_public_module_class_and_function_has_a_docstring() -> None:
    for path in MODULES:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        public = [n for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)]
        for cls in [n for n in public if isinstance(n, ast.ClassDef) and n.name[0] != "_"]:
            public += [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        for node in public:
            if not node.name.startswith("_") or node.name == "__init__":
                assert ast.get_docstring(node), f"{path.name}: {node.name} has no docstring"
