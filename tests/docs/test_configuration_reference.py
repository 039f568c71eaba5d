"""The configuration reference (docs/reference/configuration.md) documents every field of the schema.

The rule the page follows (also stated in an HTML comment at its top):

A *field table* is a Markdown table whose header row starts with ``| Field |``. It documents the
section of the nearest heading above it that carries an anchor ``{#...}``: ``sidecar``, ``service``
or ``route`` for a kind, or ``<kind>-<path>`` for a nested section, the parts joined with ``-``
(``service-retries-backoff``). Each row starts with the field's name in backticks. The field's
dotted path is the anchor with ``-`` read as ``.``, then the name: ``service.retries.backoff.base``.

Checked here: every field reachable from ``SidecarConfig``, ``ServiceConfig`` and ``RouteConfig``
(through nested sections and lists of them, at any depth) has exactly one row; every row names a
field that exists (no stale entries); and every value of a field with a fixed set of values
(a ``Literal``, or a ``one_of`` parser) appears in backticks in its row. The page's examples are
also loaded, so they stay valid.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from sidecar.config import load_directory
from sidecar.config.fields import Model, ValidationError, fields_of, items, nested, one_of, plain
from sidecar.config.schema import RouteConfig, ServiceConfig, SidecarConfig

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "reference" / "configuration.md"
KINDS: dict[str, type[Model]] = {"sidecar": SidecarConfig, "service": ServiceConfig, "route": RouteConfig}

_HEADING_RE = re.compile(r"^#{1,6}\s.*\{#([A-Za-z0-9_-]+)\}\s*$")
_ROW_NAME_RE = re.compile(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|")
_NOT_A_CHOICE = "\x00not-a-choice"


# --------------------------------------------------------------------------------------------------
# The schema: every field by dotted path, with its fixed values.
# --------------------------------------------------------------------------------------------------


def _walk_type(hint: Any) -> Iterator[Any]:
    """Every type inside ``hint`` (through ``Optional``, ``tuple[...]``, ``Annotated`` ...)."""
    yield hint
    if typing.get_origin(hint) is Literal:
        return
    for arg in typing.get_args(hint):  # a Parser or ``...`` among them has no args: harmless
        yield from _walk_type(arg)


def _literal_values(hint: Any) -> list[str]:
    return [
        str(value)
        for found in _walk_type(hint)
        if typing.get_origin(found) is Literal
        for value in typing.get_args(found)
    ]


def _nested_models(hint: Any) -> list[type[Model]]:
    return [found for found in _walk_type(hint) if isinstance(found, type) and issubclass(found, Model)]


def _parser_choices(model: type[Model], name: str) -> list[str]:
    """The choices a ``one_of`` parser names when it refuses a value (alone or in a list), whatever
    the field's type says: a field typed ``str`` but read by ``one_of`` still has fixed values."""
    parser = fields_of(model)[name].parser
    for probe in (_NOT_A_CHOICE, [_NOT_A_CHOICE]):
        try:
            parser.parse(probe, True)
        except ValidationError as error:
            messages = [inner.message for inner in error.errors]
        except (ValueError, TypeError) as error:
            messages = [str(error)]
        else:
            continue
        for message in messages:
            found = re.fullmatch(r"invalid value .* \(expected (.*)\)", message)
            if found:
                return re.findall(r"'([^']*)'", found.group(1))
    return []


def schema_fields(kinds: Mapping[str, type[Model]]) -> dict[str, list[str]]:
    """``{dotted path: [fixed values]}`` for every field reachable from each kind's model."""
    found: dict[str, list[str]] = {}

    def visit(model: type[Model], prefix: str, seen: tuple[type[Model], ...]) -> None:
        hints = typing.get_type_hints(model, include_extras=True)
        for name in fields_of(model):
            path = f"{prefix}.{name}"
            hint = hints[name]
            values = list(dict.fromkeys(_literal_values(hint) + _parser_choices(model, name)))
            found[path] = values
            for inner in _nested_models(hint):
                if inner not in seen:  # a model nested in itself would recurse forever
                    visit(inner, path, (*seen, inner))

    for kind, model in kinds.items():
        visit(model, kind, (model,))
    return found


# --------------------------------------------------------------------------------------------------
# The page: every field row by dotted path.
# --------------------------------------------------------------------------------------------------


@dataclass
class PageField:
    path: str
    row: str
    line: int


def page_fields(text: str, kinds: Mapping[str, type[Model]]) -> tuple[list[PageField], list[str]]:
    """The field rows of the page, and the problems met reading them (a field table outside a
    kind's section, a row that does not start with a backticked name)."""
    rows: list[PageField] = []
    problems: list[str] = []
    anchor: str | None = None
    in_table = False
    fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        heading = _HEADING_RE.match(stripped)
        if heading:
            anchor = heading.group(1)
            in_table = False
            continue
        if not stripped.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if not in_table:
            if cells and cells[0] == "Field":
                in_table = True
                if anchor is None or anchor.split("-")[0] not in kinds:
                    problems.append(f"line {number}: a field table under #{anchor}, which is no kind's section")
                    in_table = False
            continue
        if set(stripped) <= set("|-: "):
            continue  # the delimiter row
        named = _ROW_NAME_RE.match(stripped)
        if named is None:
            problems.append(f"line {number}: a field table row without a `name` first: {stripped[:60]}")
            continue
        assert anchor is not None
        rows.append(PageField(f"{anchor.replace('-', '.')}.{named.group(1)}", stripped, number))
    return rows, problems


def check_reference(text: str, kinds: Mapping[str, type[Model]]) -> list[str]:
    """Every way the page and the schema disagree, as messages naming the dotted path."""
    fields = schema_fields(kinds)
    rows, problems = page_fields(text, kinds)
    by_path: dict[str, PageField] = {}
    for row in rows:
        if row.path in by_path:
            problems.append(f"{row.path}: listed twice (lines {by_path[row.path].line} and {row.line})")
        by_path.setdefault(row.path, row)
    for path, values in fields.items():
        documented = by_path.get(path)
        if documented is None:
            problems.append(f"{path}: not documented")
            continue
        missing = [value for value in values if f"`{value}`" not in documented.row]
        if missing:
            problems.append(f"{path}: values not listed in its row: {', '.join(missing)}")
    for path, row in by_path.items():
        if path not in fields:
            problems.append(f"{path}: documented (line {row.line}) but not a field of the schema")
    return problems


# --------------------------------------------------------------------------------------------------
# The real page.
# --------------------------------------------------------------------------------------------------


def test_every_field_and_value_is_documented() -> None:
    problems = check_reference(PAGE.read_text(), KINDS)
    assert not problems, "docs/reference/configuration.md and the schema disagree:\n" + "\n".join(problems)


def test_the_walk_reaches_deep_fields_and_values() -> None:
    fields = schema_fields(KINDS)
    assert fields["sidecar.capture.outbound_policy"] == ["allow_any", "registry_only"]
    assert fields["service.retries.backoff.base"] == []
    assert "5xx" in fields["service.retries.on"]
    assert fields["sidecar.inbound.app_protocol"] == ["http1", "h2c"]
    assert {"route.rules.to.weight", "route.rules.match.headers", "service.endpoints.address"} <= set(fields)
    assert len(fields) > 90  # 99 when this was written


def test_a_missing_row_is_named() -> None:
    text = PAGE.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `outbound_policy` |"))
    problems = check_reference(text.replace(row + "\n", ""), KINDS)
    assert problems == ["sidecar.capture.outbound_policy: not documented"]


def test_a_missing_value_is_named() -> None:
    text = PAGE.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `load_balancer` |"))
    problems = check_reference(text.replace(row, row.replace("`ring_hash`", "ring_hash")), KINDS)
    assert problems == ["service.load_balancer: values not listed in its row: ring_hash"]


# --------------------------------------------------------------------------------------------------
# The checker on a small made-up schema: it fails when it should.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Leaf(Model):
    colour: Annotated[Literal["red", "blue"], one_of("red", "blue")] = "red"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Item(Model):
    size: Annotated[int, plain(int)] = 1
    flavour: Annotated[str, one_of("sweet", "sour")] = "sweet"  # typed str: the choices come from the parser


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Root(Model):
    name: Annotated[str, plain(str)] = "x"
    leaf: Annotated[_Leaf | None, nested(_Leaf)] = None
    items: Annotated[tuple[_Item, ...], items(nested(_Item))] = ()


_FAKE = {"fake": _Root}
_GOOD = """
## Fake {#fake}

| Field | Meaning |
|---|---|
| `name` | a name |
| `leaf` | a section |
| `items` | a list |

### leaf {#fake-leaf}

| Field | Meaning |
|---|---|
| `colour` | `red` or `blue` |

| Value | not a field table |
|---|---|
| `anything` | ignored |

```
| Field | inside a code block: ignored |
| `ghost` | |
```

### items {#fake-items}

| Field | Meaning |
|---|---|
| `size` | how big |
| `flavour` | `sweet` or `sour` |
"""


def test_fake_schema_complete_page_passes() -> None:
    assert check_reference(_GOOD, _FAKE) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("| `size` | how big |\n", ""), "fake.items.size: not documented"),
        (("`blue`", "blue"), "fake.leaf.colour: values not listed in its row: blue"),
        (("`sour`", "sour"), "fake.items.flavour: values not listed in its row: sour"),
        (("| `size` | how big |", "| `size` | how big |\n| `shape` | gone |"), "fake.items.shape: documented"),
        (("| `name` | a name |", "| `name` | a name |\n| `name` | again |"), "fake.name: listed twice"),
        (("{#fake-leaf}", "{#leafy}"), "a field table under #leafy, which is no kind's section"),
        (("| `size` | how big |", "| size | how big |"), "a field table row without a `name` first"),
    ],
)
def test_fake_schema_problems_are_named(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in _GOOD
    problems = check_reference(_GOOD.replace(old, new, 1), _FAKE)
    assert any(expected in problem for problem in problems), problems


# --------------------------------------------------------------------------------------------------
# The page's examples load.
# --------------------------------------------------------------------------------------------------


def _examples(text: str, anchor: str) -> dict[str, str]:
    """``{file name: content}`` of the ``yaml title="NAME"`` code blocks in the section ``anchor``."""
    section = text.split(f"{{#{anchor}}}", 1)[1]
    section = re.split(r"^#{1,6}\s", section, maxsplit=1, flags=re.M)[0]
    blocks = re.findall(r'^```yaml title="([^"]+)"\n(.*?)^```', section, flags=re.M | re.S)
    return {name: content for name, content in blocks}


def test_minimal_example_loads(tmp_path: Path) -> None:
    files = _examples(PAGE.read_text(), "minimal-example")
    assert list(files) == ["mesh.yaml"]
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    snapshot = load_directory(tmp_path)
    assert snapshot.sidecar.tls is None and snapshot.sidecar.inbound is None
    assert list(snapshot.services) == ["orders"]


def test_full_example_loads(tmp_path: Path) -> None:
    files = _examples(PAGE.read_text(), "full-example")
    assert list(files) == ["sidecar.yaml", "services.yaml", "routes.yaml"]
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    shutil.copytree(REPO / "mesh-config" / "certs", tmp_path / "certs")  # the example's tls paths
    snapshot = load_directory(tmp_path)
    assert list(snapshot.services) == ["orders", "orders-v2", "cache", "example-api"]
    assert list(snapshot.routes) == ["shop"]
    assert snapshot.sidecar.inbound is not None and snapshot.sidecar.inbound.tcp_ports == (6379,)
