"""Loading: YAML text -> environment substitution -> `Config`, every problem reported at once.

Strings may reference the environment as `${NAME}` or `${NAME:-default}` (write `$${` for a literal
`${`), so secrets such as the admin token stay out of the file. The environment is passed in, not
read globally, so tests and `check-config` see exactly what they are given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from canaryproxy.config.inspection import build_inspection_settings
from canaryproxy.config.machine import machine_problems
from canaryproxy.config.problems import describe
from canaryproxy.config.root import Config
from canaryproxy.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error: YAML
    says keys are unique, and PyYAML would keep the last silently, so a setting written twice would
    be ignored the first time without a word."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: merged keys may be overridden, as YAML intends
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = first_line.get(key)
                except TypeError:
                    continue  # an unhashable key: the constructor below reports it
                if seen is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice (first at line {seen + 1})",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '(top)'}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, environ, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _causes(errors: list[Any]) -> list[Any]:
    """The errors without their echoes: a list whose only bad item was refused is then also "too
    short" for pydantic, which says nothing the item's own error does not."""
    locations = [tuple(e["loc"]) for e in errors]
    return [e for e in errors if not (e["type"] == "too_short" and any(
        other[:len(e["loc"])] == tuple(e["loc"]) and other != tuple(e["loc"]) for other in locations))]


def parse(text: str, environ: Mapping[str, str], source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate config text. Raises ConfigError listing every problem."""
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; see config/example.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top, got {type(raw).__name__}")
    problems: list[str] = []
    expanded = _expand(raw, environ, "", problems)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        problems += [describe(e) for e in _causes(exc.errors())]
    if not problems:
        problems += machine_problems(config)
    if not problems and config.inspection.enabled:
        try:
            config._inspection_settings = build_inspection_settings(config, base_dir or Path("."))
        except ConfigError as exc:
            problems += exc.problems or [str(exc)]
    if problems:
        raise ConfigError(f"{source}: invalid configuration", problems)
    return config


def load(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse(text, environ, str(path), base_dir=path.parent)
