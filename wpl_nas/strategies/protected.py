"""The protected set: the few candidates a bounded strategy keeps protecting."""

from __future__ import annotations

import math
from typing import Any

from wpl_nas.spaces import Architecture

__all__ = ["ProtectedSet"]


class ProtectedSet:
    """The best ``capacity`` candidates by score at training, so protection never fills the supernet.

    Strategies whose memory grows with every protected candidate (HAT's masks, distillation
    teachers, synthetic sets) keep only these. A candidate without a score ranks below every
    scored one, and among equals the older leaves first.

    Args:
        capacity: How many candidates are kept (>= 1).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a protected set needs capacity >= 1, but got capacity={capacity}")
        self.capacity = capacity
        self._scores: dict[Architecture, float] = {}  # insertion order = age

    def __contains__(self, arch: object) -> bool:
        return arch in self._scores

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def members(self) -> list[Architecture]:
        """The protected candidates, oldest first."""
        return list(self._scores)

    def score(self, arch: Architecture) -> float:
        return self._scores[arch]

    def offer(self, arch: Architecture, score: float | None) -> tuple[bool, list[Architecture]]:
        """Propose ``arch``; returns ``(admitted, released)``.

        A candidate already inside has its score updated. When the set is full, ``arch`` is
        admitted only if it beats the worst member, which is released.
        """
        value = -math.inf if score is None or math.isnan(score) else float(score)
        if arch in self._scores:
            self._scores[arch] = value
            return True, []
        released: list[Architecture] = []
        if len(self._scores) >= self.capacity:
            worst = min(self._scores, key=lambda a: self._scores[a])  # min() keeps the oldest on ties
            if value <= self._scores[worst]:
                return False, []
            del self._scores[worst]
            released.append(worst)
        self._scores[arch] = value
        return True, released

    def release(self, arch: Architecture) -> bool:
        """Stop protecting ``arch``; False if it was not protected."""
        return self._scores.pop(arch, None) is not None

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "members": [str(a) for a in self._scores],
                "scores": list(self._scores.values())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self._scores = {Architecture.parse(a): float(s) for a, s in zip(state["members"], state["scores"],
                                                                         strict=True)}
