"""The one rule of the design: canaryproxy.core is pure (stdlib only, no I/O, no clock reads)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "canaryproxy" / "core"
ALLOWED_INTERNAL = ("canaryproxy.core", "canaryproxy.errors")
FORBIDDEN_MODULES = {"asyncio", "socket", "aiohttp", "pydantic", "prometheus_client", "yaml", "os",
                     "subprocess", "threading", "time", "datetime", "urllib", "http", "logging"}


def imports_of(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def test_core_imports_only_the_standard_library_and_itself():
    problems = []
    for path in sorted(CORE.rglob("*.py")):  # packages (core/judge/) included
        for module, line in imports_of(path):
            top = module.split(".")[0]
            if top == "canaryproxy":
                if not module.startswith(ALLOWED_INTERNAL):
                    problems.append(f"{path.relative_to(CORE)}:{line} imports {module}")
            elif top in FORBIDDEN_MODULES:
                problems.append(f"{path.relative_to(CORE)}:{line} imports {module} (I/O or a clock)")
    assert not problems, "\n".join(problems)


def test_core_never_reads_a_clock_or_the_environment():
    problems = []
    for path in sorted(CORE.rglob("*.py")):  # packages (core/judge/) included
        text = path.read_text()
        for needle in ("time.time(", "time.monotonic(", "datetime.now(", "os.environ", "open("):
            if needle in text:
                problems.append(f"{path.relative_to(CORE)} uses {needle}")
    assert not problems, "\n".join(problems)
