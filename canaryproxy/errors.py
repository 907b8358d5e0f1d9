"""The one exception tree of canaryproxy.

    CanaryProxyError
    ├── ConfigError            a config file, a flag or an environment variable is wrong (exit status 2)
    ├── StartupError           the proxy cannot start safely here (e.g. aiohttp's pure-Python parser)
    ├── StateError             the durable rollout state cannot be read or written
    │   ├── StateConflict          a compare-and-set found another generation than the writer read
    │   ├── Fenced                 a write carried a fencing token older than the current leader's
    │   └── NotDurable             a single-process store took the state but could not persist it
    ├── CommandRejected        an operator command does not apply in the current phase (admin API: 409)
    └── UpstreamError          an upstream could not give a usable response (data plane: 502/504,
                               or an aborted client connection once the response has started);
                               `kind` (an ErrorKind) says how: refused, a timeout, a reset, garbage

Every error carries a message written for the operator who reads it: what went wrong, where, and
(when we know) what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: core.stages imports this module
    from canaryproxy.core.types import ErrorKind


class CanaryProxyError(Exception):
    """Base of every error canaryproxy raises on purpose."""


class ConfigError(CanaryProxyError):
    """Bad configuration. `problems` lists one "field.path: what is wrong" line per problem."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)

    def __str__(self) -> str:
        head = super().__str__()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  {p}" for p in self.problems)


class StartupError(CanaryProxyError):
    """The proxy refuses to start: running would be unsafe or cannot work."""


class StateError(CanaryProxyError):
    """The durable rollout state is unreadable, corrupt, or cannot be written."""


class StoreUnavailable(StateError):
    """The shared store cannot be reached (as opposed to reached and found corrupt)."""


class StateConflict(StateError):
    """The stored state moved on since the writer read it (another writer won): reload, retry."""

    def __init__(self, message: str, stored_generation: int | None) -> None:
        self.stored_generation = stored_generation
        super().__init__(message)


class Fenced(StateError):
    """The writer's fencing token is older than the current leader's: it no longer leads."""


class NotDurable(StateError):
    """A single-process store accepted the state (its memory is the truth) but could not write it
    to disk: the rollout goes on, and a restart would resume from the last state written."""


class CommandRejected(CanaryProxyError):
    """An operator command that does not apply now (e.g. resume while not paused)."""


class UpstreamError(CanaryProxyError):
    """An upstream could not give a usable response.

    One class, not one per cause: every caller branches on `kind` (the bounded label the outcome
    records and the status the client gets follow from it), never on the exception type.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
