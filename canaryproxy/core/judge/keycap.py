"""At most `limit` per sticky key, in bounded memory: the judge's guard against one user's
correlated requests (a client retrying a failed request sends the same failure again).

The counts live in two generations of dicts of at most `generation_size` keys each: when the
current one fills it becomes the previous one, and a key still active is carried forward with its
count. Memory is bounded by 2 × `generation_size` keys; a key unseen for two generations is
forgotten and may count again. Requests without a key are never capped (the caller skips them).
"""

from __future__ import annotations


class KeyCap:
    """Admits at most `limit` per sticky key, in bounded memory (two generations of dicts).

    `full` is asked for every request a test looks at, so the keys at the limit are also kept in
    a set: for the many keys below it, the answer is one set lookup.
    """

    __slots__ = ("_limit", "_generation_size", "_current", "_previous", "_at_limit")

    def __init__(self, limit: int, generation_size: int) -> None:
        self._limit = limit
        self._generation_size = generation_size
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._at_limit: set[int] = set()  # the keys of either generation whose count is the limit

    def full(self, key: int) -> bool:
        """Whether `key` has reached the limit. A key at the limit stays remembered while active."""
        if key not in self._at_limit:
            return False
        if key not in self._current:
            self._remember(key, self._limit)
        return True

    def admit(self, key: int) -> bool:
        """Count one for `key` if it is below the limit; say whether it was."""
        count = self._current.get(key)
        if count is None:
            count = self._previous.get(key, 0)
        if count >= self._limit:
            self._remember(key, count)
            return False
        self._remember(key, count + 1)
        return True

    def __len__(self) -> int:
        """Keys remembered, in both generations (a key in both counts twice)."""
        return len(self._current) + len(self._previous)

    def _remember(self, key: int, count: int) -> None:
        current = self._current
        if key not in current and len(current) >= self._generation_size:
            # A new generation: keys not seen during the last two are forgotten.
            self._previous = current
            self._current = current = {}
            limit = self._limit
            self._at_limit = {k for k, c in self._previous.items() if c >= limit}
        current[key] = count
        if count >= self._limit:
            self._at_limit.add(key)
