"""File names as error messages show them: relative to where pytest runs, when inside it."""

from __future__ import annotations

import os

__all__ = ["relative"]


def relative(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if rel.startswith("..") else rel
