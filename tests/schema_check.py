"""A JSON Schema validator for the subset report.schema.json uses (no jsonschema dependency).

Keywords: type, const, enum, required, properties, additionalProperties, items, minimum, oneOf,
$ref (to #/$defs/...). An unknown keyword is an error, so the schema cannot silently outgrow it.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_ANNOTATIONS = {"$schema", "$id", "title", "$defs", "description"}


def _is(value: object, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    found: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "$ref":
            target = root
            for part in rule.removeprefix("#/").split("/"):
                target = target[part]
            found += errors(value, target, root, path)
        elif key == "type":
            names = [rule] if isinstance(rule, str) else rule
            if not any(_is(value, n) for n in names):
                found.append(f"{path}: {value!r} is not of type {rule}")
        elif key == "const":
            if value != rule:
                found.append(f"{path}: {value!r} != {rule!r}")
        elif key == "enum":
            if value not in rule:
                found.append(f"{path}: {value!r} not in {rule!r}")
        elif key == "minimum":
            if _is(value, "number") and value < rule:
                found.append(f"{path}: {value!r} < {rule}")
        elif key == "oneOf":
            matches = sum(not errors(value, option, root, path) for option in rule)
            if matches != 1:
                found.append(f"{path}: {value!r} matches {matches} of oneOf")
        elif key == "required":
            if isinstance(value, dict):
                found += [f"{path}: missing {name!r}" for name in rule if name not in value]
        elif key == "properties":
            if isinstance(value, dict):
                for name, sub in rule.items():
                    if name in value:
                        found += errors(value[name], sub, root, f"{path}.{name}")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                known = schema.get("properties", {})
                for name, item in value.items():
                    if name not in known:
                        found += errors(item, rule, root, f"{path}.{name}")
        elif key == "items":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    found += errors(item, rule, root, f"{path}[{index}]")
        else:
            raise ValueError(f"schema_check does not know the keyword {key!r} at {path}")
    return found


def validate(value: Any, schema: dict[str, Any]) -> list[str]:
    return errors(value, schema, schema)
