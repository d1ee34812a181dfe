"""Things a user picks by name: one registry per kind (step rule, transition, pulse, dataset,
launcher, export format).

Adding one is one decorated definition beside the code that uses it::

    PULSES = Registry("pulse")

    @PULSES.register("rect")
    def rect(distance, height, width): ...

``PULSES["tri"]`` returns the registered object; an unknown name raises ValueError with
one line that lists the choices.  This module imports nothing, so config validation and
help text can list names without loading what they name.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    """Name -> object, in registration order (the order users see them)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, object] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make the decorated object selectable as ``name``."""
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj
        return add

    def __getitem__(self, name: str):
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()

    def choices(self) -> str:
        """'a | b | c', for help text."""
        return " | ".join(self._items)
