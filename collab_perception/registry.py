"""Registries of named implementations: methods, models, selections are chosen by name in configs.

    MODELS = Registry('model')
    @MODELS.register('who2com')
    class Who2com: ...
    MODELS.create('who2com', cfg)      # an unknown name raises an error listing the valid ones
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str):
        def wrap(factory):
            if name in self._items:
                raise ValueError(f'{self.kind} {name!r} registered twice')
            self._items[name] = factory
            factory.registry_name = name
            return factory
        return wrap

    def names(self) -> list[str]:
        return list(self._items)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f'unknown {self.kind} {name!r}; valid: {", ".join(self._items)}') from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._items
