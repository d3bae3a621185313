"""The statistics benchmarks/run.py prints its verdicts with (the runs themselves are too long for
the test suite: `python benchmarks/run.py --quick` is their smoke test)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("n", "k", "confidence"),
    # the order statistics of the usual sign-test tables for a 95% interval of the median
    # (and below 6 values, the whole range at the level it reaches)
    [
        (1, 1, 0.0),
        (2, 1, 0.5),
        (7, 1, 0.984375),
        (9, 2, 0.9609375),
        (10, 2, 0.978515625),
        (15, 4, 0.96484375),
        (21, 6, 0.97339630),
    ],
)
def test_the_median_interval_is_the_order_statistics_a_sign_test_table_gives(
    run_py: ModuleType, n: int, k: int, confidence: float
) -> None:
    values = random.Random(n).sample(range(1000), n)
    ordered = sorted(values)
    low, high, level = run_py.median_interval(values)
    assert (low, high) == (ordered[k - 1], ordered[n - k])
    assert level == pytest.approx(confidence)


def test_too_few_values_for_95_percent_give_the_whole_range_and_say_how_sure_it_is(
    run_py: ModuleType,
) -> None:
    assert run_py.median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, 0.9375)
    text = run_py.interval_text([1.10, 1.02, 1.25, 1.08, 1.15])
    assert text == "94% interval 1.020x to 1.250x"
    assert run_py.interval_text([0.01, -0.02, 0.03], percent=True) == (
        "75% interval -2.0% to +3.0%"
    )
