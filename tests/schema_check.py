"""Validate reports against pytest_mlxcompile/report.schema.json with ``jsonschema``.

The plugin validates a ``--mlx-compare`` baseline the same way at start-up (report._load_valid).
"""

from __future__ import annotations

from typing import Any

import jsonschema


def validate(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``value`` breaks ``schema``, as ``path: message`` lines (empty when valid)."""
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda e: e.json_path)
    ]
