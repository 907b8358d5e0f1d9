"""The rules of the design: canaryproxy.core is pure (stdlib only, no I/O, no clock reads); no
import cycle; only the wiring (server, settings) and the entry points read the Config."""

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
    for path in sorted(CORE.rglob("*.py")):
        for module, line in imports_of(path):
            top = module.split(".")[0]
            if top == "canaryproxy":
                if not module.startswith(ALLOWED_INTERNAL):
                    problems.append(f"{path.name}:{line} imports {module}")
            elif top in FORBIDDEN_MODULES:
                problems.append(f"{path.name}:{line} imports {module} (I/O or a clock)")
    assert not problems, "\n".join(problems)


def test_core_never_reads_a_clock_or_the_environment():
    problems = []
    for path in sorted(CORE.rglob("*.py")):
        text = path.read_text()
        for needle in ("time.time(", "time.monotonic(", "datetime.now(", "os.environ", "open("):
            if needle in text:
                problems.append(f"{path.name} uses {needle}")
    assert not problems, "\n".join(problems)


PACKAGE = CORE.parent
CONFIG_READERS = {"cli.py", "server.py", "settings.py", "replication.py", "workers.py", "sim/demo.py", "config.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports() -> dict[str, set[str]]:
    """module -> the canaryproxy modules it imports at module level (not under TYPE_CHECKING)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found: set[str] = set()
        for node in tree.body:  # module level only: function-level imports are deliberate deferrals
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    # `from package import submodule` needs the submodule, not the package's face.
                    candidates = [f"{sub.module}.{a.name}" if f"{sub.module}.{a.name}" in modules
                                  else sub.module for a in sub.names]
                elif isinstance(sub, ast.Import):
                    candidates = [a.name for a in sub.names]
                else:
                    continue
                found |= {c for c in candidates if c in modules and c != name}
        graph[name] = found
    return graph


def test_no_import_cycle():
    graph = internal_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_only_the_wiring_reads_the_config():
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in CONFIG_READERS:
            continue
        if "canaryproxy.config" in {module for module, _ in imports_of(path)}:
            readers.append(relative)
    assert not readers, f"only {sorted(CONFIG_READERS)} may import canaryproxy.config: {readers}"
