"""Pipeline config validation: one clear message naming the field, then the schema's defaults filled."""

from __future__ import annotations

import jsonschema
import yaml


def config_error(config: dict, schema_path) -> str | None:
    """The most relevant schema violation as one line (None if the config is valid)."""
    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return (f"config field '{field}': {error.message}. Fix it in your config file or --config; every field is "
            f"documented in {schema_path}")
