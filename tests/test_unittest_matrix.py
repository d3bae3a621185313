"""unittest.TestCase methods get the matrix too: one item per mode (testcases.py)."""

from __future__ import annotations

import json

SCALE_CASE = """
    import unittest

    import mlx.core as mx

    @mx.compile
    def double(x):
        return x * 2

    class TestDouble(unittest.TestCase):
        def test_double(self):
            self.assertEqual(double(mx.array([1.0, 2.0])).tolist(), [2.0, 4.0])
"""


def test_a_testcase_method_runs_once_per_mode_under_the_matrix(pytester, run):
    pytester.makepyfile(SCALE_CASE)
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*::TestDouble::test_double[[]eager[]] PASSED*",
            "*::TestDouble::test_double[[]compiled[]] PASSED*",
            "*::TestDouble::test_double[[]shapeless[]] PASSED*",
        ]
    )


def test_each_testcase_variant_runs_its_compiled_function_in_its_own_mode(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        import mlx.core as mx

        TRACES = []

        @mx.compile
        def double(x):
            TRACES.append(x.shape)
            return x * 2

        class TestDouble(unittest.TestCase):
            def test_double(self):
                TRACES.clear()
                double(mx.ones(2))
                double(mx.ones(2))
                # eager runs the body on every call; compiled and shapeless trace once (parity off:
                # no eager shadow runs)
                print(f"body ran {len(TRACES)} times")
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "--mlx-parity=off", "-v", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*::test_double[[]eager[]] body ran 2 times",
            "PASSED",
            "*::test_double[[]compiled[]] body ran 1 times",
            "PASSED",
            "*::test_double[[]shapeless[]] body ran 1 times",
            "PASSED",
        ]
    )


def test_a_stale_global_in_a_testcase_fails_in_compiled_and_shapeless_naming_the_function(
    pytester, run
):
    pytester.makepyfile(
        """
        import unittest

        import mlx.core as mx

        W = mx.array([1.0, 2.0, 3.0])

        @mx.compile
        def scale(x):
            return x * W

        class TestScale(unittest.TestCase):
            def setUp(self):
                global W
                W = mx.array([1.0, 2.0, 3.0])

            def test_rebound_weight(self):
                global W
                scale(mx.ones(3))
                W = mx.array([10.0, 20.0, 30.0])
                scale(mx.ones(3))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-v")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*::TestScale::test_rebound_weight[[]eager[]] PASSED*",
            "E *StaleCaptureError: scale [[]compiled[]] call 2 reused a graph traced with global"
            " 'W' in * (W) frozen in, and it has changed since",
            "E *StaleCaptureError: scale [[]shapeless[]] call 2 reused a graph traced with global"
            " 'W' in * (W) frozen in, and it has changed since",
            "FAILED *::TestScale::test_rebound_weight[[]compiled[]]*",
            "FAILED *::TestScale::test_rebound_weight[[]shapeless[]]*",
        ]
    )


def test_setup_and_teardown_run_once_per_testcase_variant(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        import pytest

        def log(line):
            with open("log.txt", "a") as f:
                print(line, file=f)

        class TestLog(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                log("setUpClass")

            @classmethod
            def tearDownClass(cls):
                log("tearDownClass")

            def setUp(self):
                log(f"setUp {self._testMethodName}")

            def tearDown(self):
                log(f"tearDown {self._testMethodName}")

            @pytest.mark.compiled
            def test_x(self):
                log("test_x")
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)
    log = (pytester.path / "log.txt").read_text().splitlines()
    assert log == [
        "setUpClass",
        *["setUp test_x", "test_x", "tearDown test_x"] * 3,
        "tearDownClass",
    ]


def test_skips_and_expected_failures_apply_to_every_testcase_variant(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        class TestOutcomes(unittest.TestCase):
            @unittest.skip("not on this machine")
            def test_skipped(self):
                pass

            def test_skips_itself(self):
                self.skipTest("skipped from inside")

            @unittest.expectedFailure
            def test_known_bug(self):
                self.assertEqual(1, 2)
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-v", "-rs")
    result.assert_outcomes(skipped=6, xfailed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_skipped[[]eager[]] SKIPPED*",
            "*::test_skips_itself[[]shapeless[]] SKIPPED*",
            "*::test_known_bug[[]compiled[]] XFAIL*",
            "SKIPPED [[]3[]] *: not on this machine",
            "SKIPPED [[]3[]] *: skipped from inside",
        ]
    )


def test_a_failing_subtest_fails_each_testcase_variant(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        class TestSub(unittest.TestCase):
            def test_sub(self):
                for i in range(2):
                    with self.subTest(i=i):
                        self.assertEqual(i, 0)
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all")
    # pytest 9 reports the subtest (SUBFAILED(i=1)), pytest 8 the test (FAILED): 3 either way
    assert result.parseoutcomes()["failed"] == 3
    result.stdout.fnmatch_lines_random(
        [
            "*FAILED* *::TestSub::test_sub[[]eager[]]*",
            "*FAILED* *::TestSub::test_sub[[]compiled[]]*",
            "*FAILED* *::TestSub::test_sub[[]shapeless[]]*",
        ]
    )
    errors = [line for line in result.stdout.lines if line.startswith("E ")]
    assert [line.split(maxsplit=1)[1] for line in errors] == ["AssertionError: 1 != 0"] * 3


def test_mlx_modes_narrows_the_testcase_variants(pytester, run):
    pytester.makepyfile(SCALE_CASE)
    result = run(
        "--mlx-compile-matrix", "--mlx-matrix-scope=all", "--mlx-modes=eager,shapeless", "-v"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*::test_double[[]eager[]] PASSED*", "*::test_double[[]shapeless[]] PASSED*"]
    )
    assert "[compiled]" not in result.stdout.str()


def test_a_testcase_method_whose_marker_modes_are_all_narrowed_away_is_skipped_with_the_reason(
    pytester, run
):
    pytester.makepyfile(
        """
        import unittest

        import pytest

        class TestOnly(unittest.TestCase):
            @pytest.mark.compiled(modes=["shapeless"])
            def test_x(self):
                pass
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=eager", "-v", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*::TestOnly::test_x[[]none[]] SKIPPED*",
            "SKIPPED [[]1[]] *: none of the marker's modes (shapeless) is among --mlx-modes (eager)",
        ]
    )


def test_only_marked_testcase_methods_get_the_matrix_in_the_marked_scope(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        import pytest

        class TestScope(unittest.TestCase):
            @pytest.mark.compiled
            def test_marked(self):
                pass

            def test_plain(self):
                pass
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*::TestScope::test_marked[[]eager[]] PASSED*",
            "*::TestScope::test_marked[[]compiled[]] PASSED*",
            "*::TestScope::test_marked[[]shapeless[]] PASSED*",
            "*::TestScope::test_plain PASSED*",
        ]
    )


def test_one_testcase_variant_can_be_selected_by_its_node_id_or_by_keyword(pytester, run):
    path = pytester.makepyfile(SCALE_CASE)
    matrix = ("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-v")
    result = run(*matrix, f"{path.name}::TestDouble::test_double[compiled]")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::TestDouble::test_double[[]compiled[]] PASSED*"])
    result = run(*matrix, "-k", "shapeless")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*::TestDouble::test_double[[]shapeless[]] PASSED*"])


def test_without_the_matrix_a_testcase_method_runs_once_under_its_old_name(pytester, run):
    pytester.makepyfile(SCALE_CASE)
    result = run("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::TestDouble::test_double PASSED*"])


def test_with_the_plugin_switched_off_a_testcase_method_runs_plainly(pytester):
    pytester.makepyfile(SCALE_CASE)
    result = pytester.runpytest_subprocess("-p", "no:mlxcompile", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::TestDouble::test_double PASSED*"])


def test_a_bad_marker_on_a_testcase_method_is_a_collection_error_naming_the_method(pytester, run):
    pytester.makepyfile(
        """
        import unittest

        import pytest

        class TestBad(unittest.TestCase):
            @pytest.mark.compiled(modes=["fast"])
            def test_x(self):
                pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.compiled on *::TestBad::test_x: modes: unknown mode 'fast'; choose from"
            " eager, compiled, shapeless",
        ]
    )
    assert "KeyError" not in result.stdout.str()


def test_the_json_report_records_each_testcase_variant_with_its_mode(pytester, run):
    pytester.makepyfile(SCALE_CASE)
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "--mlx-report-json=run.json")
    result.assert_outcomes(passed=3)
    doc = json.loads((pytester.path / "run.json").read_text())
    modes = {test["nodeid"].rsplit("::", 1)[1]: test["mode"] for test in doc["tests"]}
    assert modes == {
        "test_double[eager]": "eager",
        "test_double[compiled]": "compiled",
        "test_double[shapeless]": "shapeless",
    }


def test_a_modes_hook_is_not_silently_ignored_for_testcase_methods(pytester, run):
    pytester.makeconftest(
        """
        def pytest_mlxcompile_modes(metafunc, modes):
            return [m for m in modes if m != "shapeless"]
        """
    )
    pytester.makepyfile(SCALE_CASE)
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: pytest-mlxcompile: the pytest_mlxcompile_modes hook is not asked"
            " about the unittest.TestCase methods of TestDouble (test_double): it takes a"
            " Metafunc, and pytest makes none for TestCase methods; *",
        ]
    )


def test_pytest_s_testcase_collector_is_kept_so_what_a_conftest_set_on_it_reaches_the_variants(
    pytester, run
):
    # the plugin replaces the collector's items, never the collector: an attribute a conftest's
    # collection hook sets on it, and its type, are what the variants' parent has
    pytester.makeconftest(
        """
        import unittest
        import pytest

        @pytest.hookimpl(wrapper=True)
        def pytest_pycollect_makeitem(collector, name, obj):
            result = yield
            if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
                result.team = "kernels"
            return result

        @pytest.fixture(autouse=True)
        def owner(request):
            parent = request.node.parent
            print(f"\\n{request.node.name}: {type(parent).__name__} of team {parent.team}")
        """
    )
    pytester.makepyfile(SCALE_CASE)
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "test_double[[]eager[]]: UnitTestCase of team kernels",
            "test_double[[]compiled[]]: UnitTestCase of team kernels",
            "test_double[[]shapeless[]]: UnitTestCase of team kernels",
        ]
    )
