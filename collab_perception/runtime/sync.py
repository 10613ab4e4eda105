"""Join messages of one camera frame by header stamp (what message_filters' exact-time synchronizer does;
message_filters cannot be installed here, and an exact stamp is all the swarm's topics need: one snapshot,
one stamp)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .handshake import StampRing


class StampJoiner:
    """`add(key, stamp, value)` returns {key: value} for all `keys` once the last one of a stamp arrives.
    At most `capacity` incomplete stamps are kept; older ones are dropped (and counted)."""

    def __init__(self, keys: Sequence[str], capacity: int = 16):
        self.keys = tuple(keys)
        self._pending: StampRing[dict[str, Any]] = StampRing(capacity)

    def add(self, key: str, stamp_ns: int, value: Any) -> Optional[dict[str, Any]]:
        if key not in self.keys:
            raise KeyError(f'unknown key {key!r}; keys: {", ".join(self.keys)}')
        parts = self._pending.get(stamp_ns)
        if parts is None:
            parts = {}
            self._pending.put(stamp_ns, parts)
        parts[key] = value
        if len(parts) == len(self.keys):
            self._pending.pop(stamp_ns)
            return parts
        return None

    @property
    def dropped(self) -> int:
        return self._pending.evicted
