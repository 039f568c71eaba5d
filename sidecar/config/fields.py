"""A small declarative validator: plain data in, frozen dataclass models out, every error with its path.

A model is a ``@dataclass(frozen=True, slots=True, kw_only=True)`` deriving from ``Model``. Each field
is annotated ``Annotated[T, Parser(...)]``: the ``Parser`` reads the field from plain data and writes it
back as JSON; the dataclass default applies when the field is left out, and a field without a default
is required. ``build`` walks plain data (dicts, lists and scalars, as YAML gives them) into a model:

- every error is collected, each with its field path (``("to", 1, "weight")``), before one
  ``ValidationError`` is raised; fields are checked in declaration order, then unknown keys in order;
- a key that is not a field is an error ("unknown field"), with a hint when a field of the model
  that was not given is spelled closely (``unknown field (did you mean 'load_balancer'?)``);
- a field set to ``None`` (``null``) counts as not set, so its default applies;
- ``Model.check`` (rules across fields) runs only once every field of its model is valid.

A parser function takes ``(value, from_file)`` and returns the parsed value, or raises ``ValueError``
with an operator-facing message (a ``ValidationError`` for errors deeper inside the value). Building a
model in code (``Timeouts(connect=0.5)``) runs the same walker over the given values with
``from_file=False``, where a parser may accept more (durations as plain float seconds).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeVar, get_args, get_type_hints

FieldPath = tuple[str | int, ...]
ParseFunction = Callable[[Any, bool], Any]
"""``(value, from_file) -> parsed value``; raises ``ValueError`` for bad input."""

M = TypeVar("M", bound="Model")

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+")


def show(value: object) -> str:
    """Render a config value for an error message, the way it would look in YAML."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def format_path(path: FieldPath) -> str:
    """``("rules", 0, "to", 1, "weight")`` -> ``rules[0].to[1].weight``; odd keys are quoted: ``a["x y"]``."""
    text = "" if path else "(document)"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY_RE.fullmatch(part):
            text += f"[{json.dumps(part)}]"
        else:
            text += f".{part}" if text else part
    return text


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    """One problem, at ``path`` relative to the value being validated."""

    path: FieldPath
    message: str

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.message}"


class ValidationError(ValueError):
    """Every problem found in a value; ``errors`` are in the order they were found."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def located(error: ValueError, *prefix: str | int) -> list[FieldError]:
    """The errors a parser raised, with ``prefix`` (where the parsed value sits) put before their paths."""
    if isinstance(error, ValidationError):
        return [FieldError((*prefix, *inner.path), inner.message) for inner in error.errors]
    return [FieldError(prefix, str(error))]


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Parser:
    """How one field is read from plain data (``parse``) and written back as JSON (``dump``)."""

    parse: ParseFunction
    dump: Callable[[Any], Any] = _same


def plain(function: Callable[[Any], Any], dump: Callable[[Any], Any] = _same) -> Parser:
    """A parser from a one-argument function: the value is read the same in files and in code."""
    return Parser(lambda value, _from_file: function(value), dump)


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {show(value)}")
    return value


INTEGER = plain(_integer)
"""A strict integer: ``true``, ``1.0`` and ``"5"`` are not integers."""


def bounded(parser: Parser, *, ge: int | None = None, gt: int | None = None, le: int | None = None) -> Parser:
    """``parser``, then bounds on the parsed value; a message shows the value as written."""

    def parse(value: Any, from_file: bool) -> Any:
        parsed = parser.parse(value, from_file)
        if ge is not None and not parsed >= ge:
            raise ValueError(f"must be at least {ge}, got {show(value)}")
        if gt is not None and not parsed > gt:
            raise ValueError(f"must be greater than {gt}, got {show(value)}")
        if le is not None and not parsed <= le:
            raise ValueError(f"must be at most {le}, got {show(value)}")
        return parsed

    return Parser(parse, parser.dump)


def one_of(*choices: str) -> Parser:
    """One of the given strings (the values of a ``Literal``)."""
    expected = ", ".join(map(repr, choices[:-1])) + " or " if len(choices) > 1 else ""
    expected += repr(choices[-1])

    def parse(value: object) -> str:
        if not (isinstance(value, str) and value in choices):
            raise ValueError(f"invalid value {show(value)} (expected {expected})")
        return value

    return plain(parse)


def items(parser: Parser, *, non_empty: bool = False, distinct: bool = False) -> Parser:
    """A list (or tuple) of items read by ``parser``, as a tuple; ``distinct`` drops repeats, keeping the first."""

    def parse(value: Any, from_file: bool) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {show(value)}")
        parsed: list[Any] = []
        errors: list[FieldError] = []
        for index, item in enumerate(value):
            try:
                parsed.append(parser.parse(item, from_file))
            except ValueError as error:
                errors += located(error, index)
        if errors:
            raise ValidationError(errors)
        if non_empty and not parsed:
            raise ValueError("must not be empty")
        return tuple(dict.fromkeys(parsed) if distinct else parsed)

    return Parser(parse, lambda value: [parser.dump(item) for item in value])


def nested(model: type[Model]) -> Parser:
    """A mapping read as ``model`` (an instance of it is taken as it is); written back as a JSON object."""
    return Parser(lambda value, from_file: build(model, value, from_file=from_file), lambda value: value.to_json())


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    parser: Parser
    default: Any  # dataclasses.MISSING: required


_FIELDS: dict[type, dict[str, _Field]] = {}


def fields_of(model: type[Model]) -> dict[str, _Field]:
    """Each field of ``model`` by name, in declaration order, with its parser and default."""
    if model not in _FIELDS:
        hints = get_type_hints(model, include_extras=True)
        found: dict[str, _Field] = {}
        for field in dataclasses.fields(model):
            parsers = [extra for extra in get_args(hints[field.name])[1:] if isinstance(extra, Parser)]
            if len(parsers) != 1:
                raise TypeError(f"{model.__name__}.{field.name} needs exactly one Parser in its Annotated[...]")
            found[field.name] = _Field(parsers[0], field.default)
        _FIELDS[model] = found
    return _FIELDS[model]


class Model:
    """Base of the config models: frozen dataclasses whose fields are read by their ``Parser``."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by @dataclass on each model

    def __post_init__(self) -> None:
        # Built in code: check and normalize the values given as ``build`` would (from_file=False).
        names = fields_of(type(self))
        checked = build(type(self), {name: getattr(self, name) for name in names}, from_file=False)
        for name in names:
            object.__setattr__(self, name, getattr(checked, name))

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Adjust the data (nulls already dropped) before its fields are read; e.g. defaults from other fields."""
        return data

    def check(self, given: Mapping[str, Any]) -> None:
        """Rules across fields, run once every field is valid; raise ``ValueError`` or ``ValidationError``.

        ``given`` is the data the model was read from (after ``prepare``), for rules about what was written.
        """

    @classmethod
    def model_validate(cls, data: object, *, context: Mapping[str, Any] | None = None) -> Self:
        """Read ``data``; ``context=FILE_CONTEXT`` (``{"from_file": True}``) for data read from a file."""
        return build(cls, data, from_file=bool(context and context.get("from_file")))

    def to_json(self) -> dict[str, Any]:
        """Every field, defaults included, in the notation the files use: ready for ``json.dumps``."""
        return {
            name: None if (value := getattr(self, name)) is None else field.parser.dump(value)
            for name, field in fields_of(type(self)).items()
        }


def _unknown_field(key: object, fields: Mapping[str, _Field], given: Mapping[str, Any]) -> str:
    """The message for an unknown key: with the closest field not given, when one is close (a typo, a case)."""
    if not isinstance(key, str):
        return "unknown field"
    import difflib  # only on this error path: the running proxy never needs it

    candidates = [name for name in fields if name not in given]
    close = difflib.get_close_matches(key.lower(), candidates, n=1)
    return f"unknown field (did you mean {close[0]!r}?)" if close else "unknown field"


def build(model: type[M], data: object, *, from_file: bool) -> M:
    """Read plain ``data`` (a mapping) as ``model``; raises ``ValidationError`` listing every problem."""
    if isinstance(data, model):
        return data
    if not isinstance(data, Mapping):
        raise ValidationError([FieldError((), f"expected a mapping, got {show(data)}")])
    fields = fields_of(model)
    given = model.prepare({key: value for key, value in data.items() if not (value is None and key in fields)})
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, field in fields.items():
        if name in given:
            try:
                values[name] = field.parser.parse(given[name], from_file)
            except ValueError as error:
                errors += located(error, name)
        elif field.default is dataclasses.MISSING:
            errors.append(FieldError((name,), "field required"))
        else:
            values[name] = field.default
    errors += [FieldError((key,), _unknown_field(key, fields, given)) for key in given if key not in fields]
    if errors:
        raise ValidationError(errors)
    instance = object.__new__(model)  # the values are checked already: no second pass through __init__
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    try:
        instance.check(given)
    except ValueError as error:
        raise ValidationError(located(error)) from None
    return instance
