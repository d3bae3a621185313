"""The benchmarks of pytest-mlxcompile itself: ``python benchmarks/run.py`` (docs/performance.md).

A regular package, so that ``-p benchmarks._device`` finds this one before any other
``benchmarks`` on the path.
"""
