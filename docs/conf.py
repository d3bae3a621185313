"""Sphinx configuration: Markdown pages (MyST), the furo theme, generated reference tables."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

import pytest_mlxcompile  # noqa: E402  (after the path set-up above)

project = "pytest-mlxcompile"
author = "The pytest-mlxcompile developers"
copyright = "2026, The pytest-mlxcompile developers"
release = version = pytest_mlxcompile.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "mlx_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_title = f"pytest-mlxcompile {release}"
smartquotes = False
