"""The config schema is the one source of every setting: its default, type, range, choices and help.

``electra_ds/schemas/config.schema.yaml`` (package data: an installed package has it too) declares each field
once. Snakemake validates a config against it and fills the defaults; each stage builds its command-line options
for the fields it takes from the same schema (:func:`add_settings`), checks the values it is given against it
(:func:`check_settings`), and the rules render a config section into those options with one helper
(:func:`render`, ``stage_args`` in ``common.smk``). So ``electra-ds <stage>`` run by hand sees the defaults the
pipeline sees.

A stage declares what it takes as ``SETTINGS = {section: (field, ...)}``; the section ``""`` is the top level
(``seed``). Each field becomes ``--field-name`` (``--flag``/``--no-flag`` for booleans, JSON for objects and
arrays); ``None`` is "not given".
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import yaml

from electra_ds.common.errors import UserError

# The one copy of the schema, shipped inside the package; the Snakefile and every reader use this path.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

Settings = dict  # {section: (field, ...)}


@functools.cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def node(section: str, name: str) -> dict:
    """The schema node of ``section.name`` (``name`` alone for the top level)."""
    props = schema()["properties"]
    if section:
        props = props[section]["properties"]
    if name not in props:
        raise KeyError(f"{section + '.' if section else ''}{name} is not a field of {SCHEMA_PATH.name}")
    return props[name]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _types(spec: dict) -> list[str]:
    t = spec.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _converter(spec: dict):
    types = [t for t in _types(spec) if t != "null"]
    if "enum" in spec or types == ["string"]:
        return str
    if types == ["integer"]:
        return int
    if types == ["number"]:
        return float
    if types and types[0] in ("object", "array"):
        return json_value
    raise TypeError(f"no command-line form for schema type {types}")


def json_value(text: str):
    """An object or array option: JSON text, or the path of a JSON file."""
    text = text.strip()
    if not text.startswith(("[", "{")) and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); e.g. '[{{\"type\": \"demo\"}}]' or a JSON file")


def default(spec: dict):
    """A field's default; for an object with declared fields, their defaults under the given one (as Snakemake's
    validation fills a config)."""
    value = spec.get("default")
    if _types(spec) == ["object"] and "properties" in spec:
        nested = {k: default(v) for k, v in spec["properties"].items() if "default" in v}
        return {**nested, **(value or {})}
    return value


def fill_defaults(instance, spec: dict | None = None) -> None:
    """Set the schema's ``default`` of every absent object property, at every depth, in place (what Snakemake's
    validate fills in a config); ``spec`` is the whole schema unless given."""
    spec = schema() if spec is None else spec
    if not isinstance(instance, dict) or not isinstance(spec, dict):
        return
    for key, sub in (spec.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if key not in instance and "default" in sub:
            instance[key] = json.loads(json.dumps(sub["default"]))  # a copy: the cached schema stays as it is
        if key in instance:
            fill_defaults(instance[key], sub)


class _ObjectOption:
    """An object option: JSON (or a JSON file) merged over the field's defaults, like a config section."""

    def __init__(self, spec: dict):
        self.defaults = default(spec)
        self.__name__ = "JSON object"

    def __call__(self, text: str):
        value = json_value(text)
        return {**self.defaults, **value} if isinstance(value, dict) else value


def add_settings(parser, settings: Settings, **overrides) -> None:
    """One option per field of ``settings``, with the schema's default, type, choices and description.
    ``overrides`` (by field name) adjust an option, e.g. ``required=True`` for a stage that needs a value."""
    group = parser.add_argument_group("settings (config fields; defaults from " + SCHEMA_PATH.name + ")")
    for section, names in settings.items():
        for name in names:
            spec = node(section, name)
            field = f"{section}.{name}" if section else name
            description = " ".join(str(spec.get("description", "")).split())
            kwargs = {"dest": name, "default": default(spec),
                      # argparse %-formats help text ("%(default)s"): a literal % in a description must be %%
                      "help": f"{field}: {description}".rstrip(": ").replace("%", "%%")}
            if _types(spec) == ["boolean"]:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _converter(spec)
                if "enum" in spec:
                    kwargs["choices"] = spec["enum"]
                if kwargs["type"] is json_value:
                    kwargs["metavar"] = "JSON"
                    if _types(spec) == ["object"] and "properties" in spec:
                        kwargs["type"] = _ObjectOption(spec)
            kwargs.update(overrides.get(name, {}))
            group.add_argument(flag(name), **kwargs)


def _relevance():
    import jsonschema

    # a misspelt key ('path' for 'paths') explains the missing required one: report it first
    return jsonschema.exceptions.by_relevance(strong=frozenset({"additionalProperties"}))


def check_settings(args, settings: Settings) -> None:
    """Each given value against its schema node (ranges, enums, object fields): a UserError naming the option."""
    import jsonschema

    for section, names in settings.items():
        for name in names:
            value = getattr(args, name)
            if value is None:
                continue  # not given (the field's default is null)
            errors = jsonschema.Draft202012Validator(node(section, name)).iter_errors(value)
            error = jsonschema.exceptions.best_match(errors, key=_relevance())
            if error is not None:
                field = (f"{section}.{name}" if section else name) + "".join(
                    f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
                raise UserError(f"{flag(name)}: {error.message}.", field=field,
                                fix=f"a value the schema allows (`--help` names each option's field; "
                                    f"{SCHEMA_PATH.name} gives its range)")


def render(values: dict, settings: Settings) -> list[str]:
    """The command-line words for ``settings`` taken from ``values`` ({section: {field: value}}, top level
    under ``""``): booleans as --flag / --no-flag, objects and arrays as JSON, None left out."""
    words: list[str] = []
    for section, names in settings.items():
        source = values[section]
        for name in names:
            value = source[name]
            if value is None:
                continue
            if isinstance(value, bool):
                words.append(flag(name) if value else "--no-" + name.replace("_", "-"))
            else:
                text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
                words += [flag(name), text]
    return words


def fields(settings: Settings) -> list[str]:
    return [f"{s}.{n}" if s else n for s, names in settings.items() for n in names]
