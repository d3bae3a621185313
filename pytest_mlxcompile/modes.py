"""The three ways a test variant runs every instrumented ``mx.compile``."""

from __future__ import annotations

import enum

__all__ = ["ALL_MODES", "Mode", "parse_modes"]


class Mode(str, enum.Enum):
    """How instrumented functions run in the current test variant.

    ``Mode.EAGER == "eager"``: the plain Python function, the reference.
    ``Mode.COMPILED``: ``mx.compile`` exactly as declared.
    ``Mode.SHAPELESS``: ``mx.compile`` with ``shapeless=True`` forced.
    """

    EAGER = "eager"
    COMPILED = "compiled"
    SHAPELESS = "shapeless"

    def __str__(self) -> str:
        return self.value

    @property
    def compiles(self) -> bool:
        return self is not Mode.EAGER


ALL_MODES: tuple[Mode, ...] = (Mode.EAGER, Mode.COMPILED, Mode.SHAPELESS)


def parse_modes(value: object, *, source: str) -> tuple[Mode, ...]:
    """Modes from ``"eager,compiled"`` or an iterable of names/Modes, in canonical order.

    Raises ValueError naming ``source`` and the bad entry.
    """
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        names = [str(part) for part in value]
    else:
        raise ValueError(
            f"{source}: expected a comma-separated string or a sequence of mode names, "
            f"got {type(value).__name__} {value!r}"
        )
    valid = ", ".join(m.value for m in ALL_MODES)
    chosen: set[Mode] = set()
    for name in names:
        try:
            chosen.add(Mode(name))
        except ValueError:
            raise ValueError(f"{source}: unknown mode {name!r}; choose from {valid}") from None
    if not chosen:
        raise ValueError(f"{source}: no modes given; choose from {valid}")
    return tuple(m for m in ALL_MODES if m in chosen)
