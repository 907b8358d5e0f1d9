"""Checks of a valid config against the machine it is loaded on: what `check-config` can know
before `run` would fail on it. The state file's directory must be a directory that takes new
files, or one that can be created (one is created and removed to know); each listen address must
resolve to addresses of this machine.

Ports are not tried: the running proxy holds them while the next config is checked, so a port in
use says nothing about the file. `run` reports that one when it binds.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import tempfile
from pathlib import Path

from canaryproxy.config.root import Config

_WILDCARDS = ("", "0.0.0.0", "::")


def machine_problems(config: Config) -> list[str]:
    problems = []
    for field, path in (("state.path", config.state.path), ("state.audit_log", config.state.audit_log)):
        problem = _file_problem(path)
        if problem:
            problems.append(f"{field}: {problem}")
    for field, (host, port) in (("listen", config.listen), ("admin.listen", config.admin.listen)):
        problem = _address_problem(host, port)
        if problem:
            problems.append(f"{field}: {problem}")
    if not problems:
        clash = _same_socket(config.listen, config.admin.listen)
        if clash:
            problems.append(f"admin.listen: {clash}")
    return problems


def _file_problem(path: Path | None) -> str | None:
    """A file the proxy will create and replace: its directory must be one, or be creatable (`run`
    creates it), and take new files."""
    if path is None:
        return None
    try:
        if path.is_dir():
            return f"{path} is a directory; give the path of a file in it (e.g. {path / 'state.json'})"
        existing = next(p for p in path.parents if p.exists())  # "/" exists, so one always does
        if not existing.is_dir():
            return f"the parent of {path} is not a directory ({existing} is a file)"
    except OSError as exc:  # permission denied on the way, a name too long, ...
        return f"cannot use {path}: {exc.strerror or exc}"
    try:
        # What `run` will do there, tried once and undone: a directory if one is missing, else a
        # file (the store writes a temporary file beside the state and renames it). Permission
        # bits do not tell, for root or under /proc and /sys.
        if existing == path.parent:
            descriptor, probe = tempfile.mkstemp(dir=existing, prefix=".canaryproxy-check-")
            os.close(descriptor)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".canaryproxy-check-"))
    except OSError as exc:
        if existing == path.parent:
            return f"cannot create files in {existing}, the directory of {path}: {exc.strerror or exc}"
        return (f"the directory of {path} does not exist and cannot be created in {existing}: "
                f"{exc.strerror or exc}")
    return None


def _address_problem(host: str, port: int) -> str | None:
    """None when `host` resolves and every address it resolves to can be bound on this machine."""
    where = _show(host, port)
    if host in _WILDCARDS:
        return None
    if _looks_numeric(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"{where}: {host} is not an IP address"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{where}: cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind((address[0], 0, *address[2:]))  # the address only: port 0, never the port
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{where}: {address[0]} is not an address of this machine"
                return f"{where}: cannot bind {address[0]}: {exc.strerror or exc}"
    return None


def _same_socket(data: tuple[str, int], admin: tuple[str, int]) -> str | None:
    (data_host, data_port), (admin_host, admin_port) = data, admin
    if data_port == 0 or data_port != admin_port:
        return None
    if data_host == admin_host or data_host in _WILDCARDS or admin_host in _WILDCARDS:
        return (f"{_show(admin_host, admin_port)} is also the proxy's listen address "
                f"({_show(data_host, data_port)}): give the admin API a port of its own")
    return None


def _looks_numeric(host: str) -> bool:
    # A name whose last label is all digits is not a host name (RFC 1123 §2.1): `999.1.1.1` is a
    # mistyped IPv4 address, and resolvers would try it as a name.
    return host.rsplit(".", 1)[-1].isdigit() or ":" in host


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
