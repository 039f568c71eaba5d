"""The declarative validator behind the models: paths, nulls, unknown fields, code-built models, JSON."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Annotated, Any

import pytest

from sidecar.config.fields import (
    INTEGER,
    FieldError,
    Model,
    Parser,
    ValidationError,
    bounded,
    build,
    items,
    nested,
    one_of,
    plain,
)


def _seconds(value: Any, from_file: bool) -> float:
    if from_file and not isinstance(value, str):
        raise ValueError("files need a string")
    return float(value.removesuffix("s")) if isinstance(value, str) else float(value)


SECONDS = Parser(_seconds, dump=lambda seconds: f"{seconds}s")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Leaf(Model):
    count: Annotated[int, bounded(INTEGER, ge=1)] = 1
    color: Annotated[str, one_of("red", "green", "blue")] = "red"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tree(Model):
    name: Annotated[str, plain(str)]
    leaves: Annotated[tuple[Leaf, ...], items(nested(Leaf), non_empty=True)]
    tags: Annotated[tuple[str, ...], items(plain(str.lower), distinct=True)] = ()
    top: Annotated[Leaf | None, nested(Leaf)] = None
    wait: Annotated[float, SECONDS] = 2.0

    def check(self, given: Any) -> None:
        if self.name in self.tags:
            raise ValueError("name must not be a tag")


def errors(model: type[Model], data: object, *, from_file: bool = True) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        build(model, data, from_file=from_file)
    return [str(error) for error in caught.value.errors]


def test_build_fills_defaults_and_nests() -> None:
    tree = build(
        Tree, {"name": "oak", "leaves": [{}, {"count": 3, "color": "blue"}], "tags": ["A", "a", "b"]}, from_file=True
    )
    assert tree == Tree(name="oak", leaves=(Leaf(), Leaf(count=3, color="blue")), tags=("a", "b"))
    assert tree.top is None and tree.wait == 2.0


def test_every_error_with_its_path_fields_first_then_unknown_keys() -> None:
    data = {"zz": 1, "leaves": [{"count": 0, "hue": 1}, 5, {"color": "pink"}], "top": [], "aa": None}
    assert errors(Tree, data) == [
        "name: field required",
        "leaves[0].count: must be at least 1, got 0",
        "leaves[0].hue: unknown field",
        "leaves[1]: expected a mapping, got 5",
        "leaves[2].color: invalid value 'pink' (expected 'red', 'green' or 'blue')",
        "top: expected a mapping, got a list",
        "zz: unknown field",
        "aa: unknown field",  # null drops only known fields
    ]


def test_unknown_field_hint_names_a_close_field_not_given() -> None:
    assert errors(Tree, {"name": "a", "leaves": [{"colour": "red", "cuont": 2}], "Tags": []}) == [
        "leaves[0].colour: unknown field (did you mean 'color'?)",
        "leaves[0].cuont: unknown field (did you mean 'count'?)",
        "Tags: unknown field (did you mean 'tags'?)",
    ]
    # the close field is written already, nothing is close, or the key is not a string: no hint
    assert errors(Leaf, {"color": "red", "colour": "red", "xyz": 1, 7: 1}) == [
        "colour: unknown field",
        "xyz: unknown field",
        "[7]: unknown field",
    ]


def test_null_means_not_set() -> None:
    tree = build(Tree, {"name": "oak", "leaves": [{"count": None}], "top": None, "wait": None}, from_file=True)
    assert (tree.leaves, tree.top, tree.wait) == ((Leaf(),), None, 2.0)
    assert errors(Tree, {"name": None, "leaves": [{}]}) == ["name: field required"]


def test_lists() -> None:
    assert errors(Tree, {"name": "a", "leaves": []}) == ["leaves: must not be empty"]
    assert errors(Tree, {"name": "a", "leaves": {"count": 1}}) == ["leaves: expected a list, got a mapping"]
    assert errors(Tree, {"name": "a", "leaves": "x"}) == ["leaves: expected a list, got 'x'"]


def test_strict_integers() -> None:
    for value, shown in ((True, "true"), (1.0, "1.0"), ("2", "'2'"), (None, None)):
        if shown is None:
            assert build(Leaf, {"count": value}, from_file=True).count == 1
        else:
            assert errors(Leaf, {"count": value}) == [f"count: expected an integer, got {shown}"]


def test_check_runs_only_when_every_field_is_valid() -> None:
    assert errors(Tree, {"name": "a", "leaves": [{}], "tags": ["A"]}) == ["(document): name must not be a tag"]
    assert errors(Tree, {"name": "a", "leaves": [{"count": 0}], "tags": ["A"]}) == [
        "leaves[0].count: must be at least 1, got 0"
    ]


def test_from_file_reaches_nested_parsers() -> None:
    assert build(Tree, {"name": "a", "leaves": [{}], "wait": 1.5}, from_file=False).wait == 1.5
    assert errors(Tree, {"name": "a", "leaves": [{}], "wait": 1.5}) == ["wait: files need a string"]
    assert build(Tree, {"name": "a", "leaves": [{}], "wait": "1.5s"}, from_file=True).wait == 1.5


def test_not_a_mapping() -> None:
    assert errors(Leaf, [1]) == ["(document): expected a mapping, got a list"]


def test_models_built_in_code_are_checked_and_normalized() -> None:
    tree = Tree(name="a", leaves=(Leaf(),), tags=("X", "x"), wait="3s", top=None)  # type: ignore[arg-type]
    assert (tree.tags, tree.wait) == (("x",), 3.0)
    assert Tree(name="a", leaves=({"count": 2},)).leaves == (Leaf(count=2),)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught:
        Tree(name="a", leaves=(Leaf(),), tags=("a",))
    assert caught.value.errors == (FieldError((), "name must not be a tag"),)
    with pytest.raises(ValidationError, match="count: must be at least 1, got 0"):
        Leaf(count=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tree.name = "b"  # type: ignore[misc]


def test_model_validate_and_to_json() -> None:
    tree = Tree.model_validate({"name": "a", "leaves": [{"count": 2}], "top": {}}, context={"from_file": True})
    assert tree.to_json() == {
        "name": "a",
        "leaves": [{"count": 2, "color": "red"}],
        "tags": [],
        "top": {"count": 1, "color": "red"},
        "wait": "2.0s",
    }
    assert Tree.model_validate({"name": "a", "leaves": [{}], "wait": 1}).wait == 1.0  # code: no file rules


def test_a_field_without_a_parser_is_a_declaration_error() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Broken(Model):
        value: int = 1

    with pytest.raises(TypeError, match=r"Broken\.value needs exactly one Parser"):
        Broken()


def test_config_package_does_not_import_pydantic() -> None:
    code = "import sys, sidecar.config; assert 'pydantic' not in sys.modules and 'pydantic_core' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
