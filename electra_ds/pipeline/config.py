"""Pipeline config validation: one clear message naming the field, then the schema's defaults filled."""

from __future__ import annotations

import jsonschema
import yaml

# The schema's `not: {pattern: ...}` on every path-like field (results_dir, ds_config, glue_dir, source paths,
# cache_dir, url, mlflow.tracking_uri): no path needs a control character, and a newline in one would split a
# shell line or a log message.
CONTROL_CHARS = r"[\x00-\x1f\x7f]"


def _message(error) -> str:
    if error.validator == "not" and (error.validator_value or {}).get("pattern") == CONTROL_CHARS:
        return (f"{error.instance!r} holds a control character (newline, tab, NUL, ...), which no path needs; "
                f"write the path on one line without them")
    return error.message


def config_error(config: dict, schema_path) -> str | None:
    """The most relevant schema violation as one line (None if the config is valid)."""
    with open(schema_path, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return (f"config field '{field}': {_message(error)}. Fix it in your config file or --config; every field is "
            f"documented in {schema_path}")
