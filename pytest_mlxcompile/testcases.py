"""unittest.TestCase methods in the matrix: one item per mode, as pytest cannot parametrize them.

pytest collects a TestCase method as a ``TestCaseFunction`` named after the method and never asks
``pytest_generate_tests`` about it, so ``metafunc.parametrize`` cannot give it variants. Instead,
what pytest's collector of a TestCase class collects is adjusted (``expand``, from the plugin's
``pytest_make_collect_report`` wrapper): each member method is replaced with one
``TestCaseVariant`` per mode, named like a parametrized variant (``test_x[eager]``,
``test_x[compiled]``, ``test_x[shapeless]``) and carrying its mode in
``item.stash[variants.MODE_KEY]`` (read by ``variants.plan``).

The hack, kept to what pytest 8.4 and 9 share (``_pytest.unittest`` is not public API):
- pytest's ``UnitTestCase`` collector is kept as it is; only the items its ``collect`` made are
  replaced;
- ``TestCaseVariant`` subclasses ``TestCaseFunction`` and only overrides ``_getinstance``: pytest
  builds the TestCase instance from ``self.name``, which here carries the mode; it must be built
  from the method name, ``originalname`` (as ``Function`` does for ``obj``); the first instance
  comes with the bound method, passed as ``callobj`` (see ``_variant``).
Everything else (setUp/tearDown, setUpClass, subTest, skips, expectedFailure, reports) is pytest's
own code running unchanged. One loss: ``--trace`` does not stop at the start of a variant (pytest
rebinds its tracing wrapper under ``self.name``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _pytest.unittest import TestCaseFunction, UnitTestCase

from pytest_mlxcompile import variants
from pytest_mlxcompile.markers import CompiledMarker, MarkerError, from_item
from pytest_mlxcompile.settings import Settings

__all__ = ["TestCaseVariant", "expand"]


class TestCaseVariant(TestCaseFunction):
    """One mode of a TestCase method: ``name`` is ``test_x[mode]``, ``originalname`` ``test_x``."""

    __test__ = False  # not a test class itself (pytest would try to collect it by its name)

    def _getinstance(self) -> object:
        assert isinstance(self.parent, UnitTestCase)
        return self.parent.obj(self.originalname)


def expand(
    collector: UnitTestCase, nodes: list[pytest.Item | pytest.Collector], settings: Settings
) -> list[pytest.Item | pytest.Collector]:
    """What pytest's collector of a TestCase class made, with each member method replaced by
    its variants (another plugin's item type, a subclass, is left as it is)."""
    out: list[pytest.Item | pytest.Collector] = []
    expanded = []
    for node in nodes:
        if type(node) is TestCaseFunction:
            items = list(_expand(node, settings))
            if items != [node]:
                expanded.append(node.name)
            out += items
        else:
            out.append(node)
    # more than the plugin's own (trylast) answer: a conftest or plugin implements the hook
    if expanded and len(collector.ihook.pytest_mlxcompile_modes.get_hookimpls()) > 1:
        collector.warn(pytest.PytestWarning(_hook_not_asked(collector.name, expanded)))
    return out


def _expand(item: TestCaseFunction, settings: Settings) -> Iterator[pytest.Item]:
    try:
        marker = from_item(item)
    except MarkerError as exc:
        error = str(exc)
    else:
        error = ""
    if error:  # outside the except block: the report shows the message once, no chained copy
        pytest.fail(error, pytrace=False)
    if not settings.matrix or not variants.is_member(marker, item.fixturenames, settings):
        yield item
        return
    modes = settings.modes
    if marker is not None and marker.modes is not None:
        modes = tuple(m for m in modes if m in marker.modes)
    if not modes:
        variant = _variant(item, "none")
        variant.add_marker(pytest.mark.skip(reason=_no_modes(marker, settings)))
        yield variant
        return
    for mode in modes:
        variant = _variant(item, mode.value)
        variant.stash[variants.MODE_KEY] = mode
        yield variant


def _variant(item: TestCaseFunction, id: str) -> TestCaseVariant:
    """``item`` as ``test_x[id]``. Its method is passed as ``callobj`` (bound to a TestCase made
    for the method name), as ``Function`` would otherwise look the bracketed name up on the
    class; ``originalname`` is set after: pytest 9 builds the node id from it."""
    parent = item.parent
    assert isinstance(parent, UnitTestCase)
    method = getattr(parent.obj(item.name), item.name)
    variant = TestCaseVariant.from_parent(parent, name=f"{item.name}[{id}]", callobj=method)
    variant.originalname = item.name
    return variant


def _hook_not_asked(cls: str, methods: list[str]) -> str:
    return (
        f"pytest-mlxcompile: the pytest_mlxcompile_modes hook is not asked about the "
        f"unittest.TestCase methods of {cls} ({', '.join(methods)}): it takes a Metafunc, and "
        "pytest makes none for TestCase methods; they run in every mode of --mlx-modes their "
        "marker allows. Narrow them with @pytest.mark.compiled(modes=[...]) or --mlx-modes."
    )


def _no_modes(marker: CompiledMarker | None, settings: Settings) -> str:
    narrowed = marker.modes if marker is not None and marker.modes else ()
    return (
        f"none of the marker's modes ({', '.join(map(str, narrowed))}) is among "
        f"--mlx-modes ({', '.join(map(str, settings.modes))})"
    )
