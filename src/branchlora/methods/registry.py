"""The one registry of methods, read by the CLI, the config loader and `branchlora run --methods`."""

from __future__ import annotations

from branchlora.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register_method(name: str, summary: str = ""):
    """Class decorator: make a Method available under `name`."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name, cls.summary = name, summary
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    """The Method class registered as `name`; an unknown name lists the valid ones."""
    import branchlora.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
