"""Reference tables generated from the code, so what other modules add appears by itself.

``.. mlx-options::`` describes every option of ``pytest_mlxcompile.settings.OPTIONS`` (flag, ini
twin, default, help); ``.. mlx-marker::`` the ``compiled`` marker's registered help;
``.. mlx-fixtures::`` the plugin's fixtures with their docstrings; ``.. mlx-hookspecs::`` the
hookspecs module when this version has one. Use them inside ``{eval-rst}`` blocks.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def literal(text: str) -> str:
    """``text`` as an RST inline literal (backslashes and backquotes survive)."""
    return f"``{text}``" if text and "``" not in text else text or "\\-"


def escape(text: str) -> str:
    """Help text as RST prose: ``*`` and ``|`` (``'<nodeid>|<mode>'``) are not markup there."""
    return re.sub(r"([*|])", r"\\\1", text)


def default_text(value: Any, is_flag: bool) -> str:
    if is_flag or isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == ():
        return "\u2014"
    if isinstance(value, tuple):
        return ",".join(str(v.value if isinstance(v, enum.Enum) else v) for v in value)
    return str(value)


def one_line(text: str) -> str:
    return " ".join(text.split())


class RecordingParser:
    """Stands in for pytest's parser to read the ini types ``add_options`` registers."""

    def __init__(self) -> None:
        self.ini_types: dict[str, str] = {}

    def getgroup(self, *args: Any, **kwargs: Any) -> RecordingParser:
        return self

    def addoption(self, *args: Any, **kwargs: Any) -> None:
        pass

    def addini(self, name: str, help: str, type: str | None = None, **kwargs: Any) -> None:
        self.ini_types[name] = type or "string"


def ini_types() -> dict[str, str]:
    from pytest_mlxcompile.settings import add_options

    parser = RecordingParser()
    add_options(parser)  # type: ignore[arg-type]
    return parser.ini_types


class GeneratedDirective(SphinxDirective):
    has_content = False

    def lines(self) -> Iterable[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        content = StringList(list(self.lines()), source=f"<{self.name}>")
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


class OptionsDirective(GeneratedDirective):
    def lines(self) -> Iterable[str]:
        from pytest_mlxcompile.settings import OPTIONS

        types = ini_types()
        for option in OPTIONS:
            flag = option.flag if option.is_flag else f"{option.flag}={option.metavar or 'VALUE'}"
            yield f".. describe:: {flag}"
            yield ""
            yield f"   {escape(one_line(option.help))}"
            yield ""
            kind = types.get(option.ini, "string")
            default = literal(default_text(option.default, option.is_flag))
            yield f"   *ini* {literal(option.ini)} ({kind}) \u00b7 *default* {default}"
            yield ""


class MarkerDirective(GeneratedDirective):
    def lines(self) -> Iterable[str]:
        from pytest_mlxcompile.markers import MARKER_HELP

        signature, _, text = MARKER_HELP.partition("): ")
        yield ".. code-block:: python"
        yield ""
        yield f"   @pytest.mark.{signature})"
        yield ""
        yield one_line(text)


def is_fixture(obj: object) -> bool:
    # pytest >= 8.4 wraps fixtures in FixtureFunctionDefinition; older ones mark the function.
    return type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(
        obj, "_pytestfixturefunction"
    )


class FixturesDirective(GeneratedDirective):
    def lines(self) -> Iterable[str]:
        plugin = importlib.import_module("pytest_mlxcompile.plugin")
        for name, obj in sorted(vars(plugin).items()):
            if not is_fixture(obj) or name.startswith("_"):
                continue
            yield f".. describe:: {name}"
            yield ""
            for line in inspect.cleandoc(obj.__doc__ or "(undocumented)").splitlines():
                yield f"   {line}"
            yield ""


class HookspecsDirective(GeneratedDirective):
    def lines(self) -> Iterable[str]:
        if importlib.util.find_spec("pytest_mlxcompile.hookspecs") is None:
            yield "This version of pytest-mlxcompile declares no hookspecs."
            return
        yield ".. automodule:: pytest_mlxcompile.hookspecs"
        yield "   :members:"


def add_unlisted_pages(app: Sphinx, docname: str, source: list[str]) -> None:
    """Pages written in docs/ but not yet placed in the index go under "More" (no orphans)."""
    if docname != app.config.root_doc:
        return
    listed = set(re.findall(r"^([\w./-]+)$", source[0], flags=re.MULTILINE))
    pages = sorted(p.stem for p in Path(app.srcdir).glob("*.md"))
    unlisted = [p for p in pages if p not in listed and p not in (docname, "README")]
    if unlisted:
        source[0] += "\n```{toctree}\n:caption: More\n\n" + "\n".join(unlisted) + "\n```\n"


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", add_unlisted_pages)
    app.add_directive("mlx-options", OptionsDirective)
    app.add_directive("mlx-marker", MarkerDirective)
    app.add_directive("mlx-fixtures", FixturesDirective)
    app.add_directive("mlx-hookspecs", HookspecsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
