"""Config directory -> Snapshot, or a ConfigError listing every problem as ``FILE:LINE: path: message``.

This module owns the trip from files to validated models: which files are read, how YAML becomes
plain data while remembering the line of every key, how validation errors become ``ConfigIssue``s,
and the checks that span documents (one Sidecar, unique service names and hosts, one Route per host,
routes to known services, ``Sidecar.tls`` present when mutual TLS needs it) or reach outside them
(the certificate files ``tls`` sections name, checked by ``certfiles.py``). What a valid field looks
like is ``schema.py``'s business.

Reading rules: every ``*.yaml``/``*.yml`` directly in DIR, sorted by name, symlinks followed;
dotfiles (and so Kubernetes' ``..data`` entries) and subfolders are skipped. A file may hold several
documents; empty ones are skipped. Every problem in every file is collected before raising, and bad
input never escapes as anything but a ``ConfigError``.

Line numbers: an issue points at the line of the offending key; a missing key points at the line
where its parent mapping starts; a list item at the line where the item starts. A problem with no
line to point at (a missing or unreadable directory, no Sidecar in it, a file that cannot be read)
is ``FILE: message``, without a made-up line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .certfiles import check_ca_bundle, check_workload_cert, spiffe_id_of
from .fields import FieldPath, Model, ValidationError, format_path, show
from .notation import normalize_host
from .schema import FILE_CONTEXT, KINDS, RouteConfig, ServiceConfig, ServiceTls, SidecarConfig, SidecarTls
from .snapshot import Snapshot, content_version

_Tls = TypeVar("_Tls", SidecarTls, ServiceTls)

_MAX_NODES = 200_000  # per document: stops alias "billion laughs" expansion
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in the config directory: ``FILE:LINE: path: message``, or ``FILE: message``
    for a problem with no line to point at (the directory itself, a file that cannot be read)."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class ConfigError(Exception):
    """The config directory is not valid; ``issues`` lists every problem found, in file and line order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


# --------------------------------------------------------------------------------------------------
# YAML nodes -> plain data, remembering lines.
# --------------------------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


@dataclass
class _Document:
    """One YAML document as plain data, with the 1-based line of each key and node in it."""

    file: str
    data: Any = None
    key_lines: dict[FieldPath, int] = field(default_factory=dict)
    node_lines: dict[FieldPath, int] = field(default_factory=dict)
    kind: str | None = None
    model: Model | None = None

    def line(self, path: FieldPath) -> int:
        """The key's line; for a path that is not in the document (a missing key), its parent's start."""
        if path in self.key_lines:
            return self.key_lines[path]
        while path not in self.node_lines and path:
            path = path[:-1]
        return self.node_lines.get(path, 1)

    def issue(self, path: FieldPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.line(path), format_path(path), message)

    def where(self, path: FieldPath) -> str:
        return f"{self.file}:{self.line(path)}"


class _Converter:
    """Turns one composed YAML document into dicts, lists and scalars, filling a ``_Document``.

    Keys are always taken as the text written (so ``on:`` is the key ``"on"``, never ``True``);
    duplicate keys, non-string keys, unknown tags and recursive aliases are reported as issues.
    """

    def __init__(self, document: _Document, issues: list[ConfigIssue]) -> None:
        self._document = document
        self._issues = issues
        self._constructor = SafeConstructor()
        self._active: set[int] = set()
        self._count = 0

    def _problem(self, line: int, path: FieldPath, message: str) -> None:
        self._issues.append(ConfigIssue(self._document.file, line, format_path(path), message))

    def convert(self, node: Node, path: FieldPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise _TooLarge
        self._document.node_lines.setdefault(path, node.start_mark.line + 1)
        line = self._document.line(path)  # problems with a value point at its key, if it has one
        if id(node) in self._active:
            self._problem(line, path, "recursive YAML alias")
            return None
        if isinstance(node, ScalarNode):
            try:
                return self._constructor.construct_object(node)
            except ConstructorError as exc:
                self._problem(line, path, f"unsupported YAML value: {exc.problem}")
                return None
        expected = _MAP_TAG if isinstance(node, MappingNode) else _SEQ_TAG
        if node.tag != expected:
            self._problem(line, path, f"unsupported YAML tag {node.tag!r}")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return [self.convert(item, (*path, index)) for index, item in enumerate(node.value)]
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: FieldPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self._problem(key_line, path, "mapping keys must be plain strings")
                continue
            key = key_node.value
            if key in first_seen:
                self._problem(key_line, (*path, key), f"duplicate key (first at line {first_seen[key]})")
                continue
            first_seen[key] = key_line
            self._document.key_lines.setdefault((*path, key), key_line)
            result[key] = self.convert(value_node, (*path, key))
        for merge in merges:  # `<<: *anchor` / `<<: [*a, *b]`: keys written here win, then earlier merges
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                merged = self.convert(source, path)
                if not isinstance(merged, dict):
                    line = source.start_mark.line + 1
                    self._problem(line, path, "'<<' needs a mapping or a list of mappings")
                    continue
                for key, value in merged.items():
                    result.setdefault(key, value)
        return result


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _yaml_issue(file: str, text: str, exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        message = f"invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return ConfigIssue(file, exc.problem_mark.line + 1, "yaml", message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return ConfigIssue(file, line, "yaml", f"invalid YAML: {exc.reason} (#x{character:04x})")
    return ConfigIssue(file, 1, "yaml", f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else exc!r}")


def _documents(file: str, content: bytes, issues: list[ConfigIssue], unread: list[ConfigIssue]) -> Iterator[_Document]:
    """The non-empty documents of one file, converted.

    Problems that lose documents (bad encoding, YAML errors) go to ``unread``, others to ``issues``.
    """
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        unread.append(ConfigIssue(file, line, "yaml", "file is not valid UTF-8"))
        return
    nodes = yaml.compose_all(text, Loader=yaml.SafeLoader)
    while True:
        try:
            node = next(nodes)
        except StopIteration:
            return
        except yaml.YAMLError as exc:  # the documents before it were still checked
            unread.append(_yaml_issue(file, text, exc))
            return
        if node is None or _is_empty(node):
            continue
        document = _Document(file)
        try:
            document.data = _Converter(document, issues).convert(node, ())
        except _TooLarge:
            line = node.start_mark.line + 1
            unread.append(ConfigIssue(file, line, "yaml", "document too large (check aliases)"))
            continue
        except RecursionError:
            unread.append(ConfigIssue(file, node.start_mark.line + 1, "yaml", "document nested too deeply"))
            continue
        yield document


# --------------------------------------------------------------------------------------------------
# Validation of one document.
# --------------------------------------------------------------------------------------------------


def _validate(document: _Document, issues: list[ConfigIssue]) -> None:
    """Check the document's ``kind`` and validate it against that kind's model."""
    data = document.data
    if not isinstance(data, dict):
        message = f"a document must be a mapping with a kind, not {show(data)}"
        issues.append(document.issue(("kind",), message))
        return
    kind = data.get("kind")
    if kind is None:
        issues.append(document.issue(("kind",), "field required"))
        return
    if not isinstance(kind, str) or kind not in KINDS:
        message = f"unknown kind {show(kind)} (expected Sidecar, Service or Route)"
        issues.append(document.issue(("kind",), message))
        return
    document.kind = kind
    try:
        payload = {k: v for k, v in data.items() if k != "kind"}
        document.model = KINDS[kind].model_validate(payload, context=FILE_CONTEXT)
    except ValidationError as exc:
        issues += [document.issue(error.path, error.message) for error in exc.errors]
    except Exception as exc:  # a validator bug must still read as a config problem, not a traceback
        issues.append(document.issue((), f"cannot validate document: {exc!r}"))


# --------------------------------------------------------------------------------------------------
# Checks across documents.
# --------------------------------------------------------------------------------------------------


def _raw_str(document: _Document, key: str) -> str | None:
    value = document.data.get(key) if isinstance(document.data, dict) else None
    return value if isinstance(value, str) else None


def _check_sidecars(directory: str, documents: list[_Document], issues: list[ConfigIssue], *, complete: bool) -> None:
    sidecars = [d for d in documents if d.kind == "Sidecar"]
    if not sidecars and complete:
        issues.append(ConfigIssue(directory, None, "", "no Sidecar found (exactly one is required)"))
    for extra in sidecars[1:]:
        first = sidecars[0].where(("kind",))
        issues.append(extra.issue(("kind",), f"more than one Sidecar (first at {first})"))


def _check_services(documents: list[_Document], issues: list[ConfigIssue]) -> set[str]:
    """Unique names, unique hosts; returns every service name written, valid document or not."""
    by_name: dict[str, _Document] = {}
    by_host: dict[str, str] = {}
    for document in (d for d in documents if d.kind == "Service"):
        name = _raw_str(document, "name")
        if name is None:
            continue
        if name in by_name:
            first = by_name[name].where(("name",))
            message = f"duplicate service name {name!r} (first defined at {first})"
            issues.append(document.issue(("name",), message))
            continue
        by_name[name] = document
        if not isinstance(document.model, ServiceConfig):
            continue
        written = isinstance(document.data.get("hosts"), list)
        for index, host in enumerate(document.model.hosts):
            if host in by_host:
                path: FieldPath = ("hosts", index) if written else ("name",)
                message = f"host {host!r} already used by service {by_host[host]!r}"
                issues.append(document.issue(path, message))
            else:
                by_host[host] = name
    return set(by_name)


def _check_routes(documents: list[_Document], services: set[str], issues: list[ConfigIssue], *, complete: bool) -> None:
    """One Route per host; every target names a Service."""
    by_host: dict[str, _Document] = {}
    for document in (d for d in documents if d.kind == "Route"):
        route = document.model if isinstance(document.model, RouteConfig) else None
        try:
            host = route.host if route else normalize_host(_raw_str(document, "host"))
        except ValueError:
            host = None
        if host is not None and host in by_host:
            first = by_host[host].where(("host",))
            message = f"duplicate route for host {host!r} (first defined at {first})"
            issues.append(document.issue(("host",), message))
        elif host is not None:
            by_host[host] = document
        for r, rule in enumerate(route.rules if route else ()):
            for t, target in enumerate(rule.to):
                if complete and target.service not in services:
                    path: FieldPath = ("rules", r, "to", t, "service")
                    issues.append(document.issue(path, f"route to unknown service {target.service!r}"))


def _tls_section(document: _Document, model: type[_Tls]) -> _Tls | None:
    """The document's ``tls`` section read as ``model`` if it is valid, whether or not the rest is."""
    try:
        return model.model_validate(document.data.get("tls"), context=FILE_CONTEXT)
    except ValidationError:
        return None


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_tls(directory: str, documents: list[_Document], issues: list[ConfigIssue]) -> str | None:
    """``Sidecar.tls`` where mutual TLS needs it, and the files ``tls`` sections name.

    The inbound listener and every service in ``tls.mode: mutual`` (the default) present the
    workload certificate, so the Sidecar must have ``tls`` then. The rule reads the data as written,
    so that it is reported even while other fields of those documents are wrong. Returns the
    workload's SPIFFE ID when its certificate is good.
    """
    services = [d for d in documents if d.kind == "Service"]
    for document in services:
        upstream = _tls_section(document, ServiceTls)
        if upstream is not None and upstream.ca is not None:
            problem = check_ca_bundle(Path(os.path.join(directory, upstream.ca)))
            if problem is not None:
                issues.append(document.issue(("tls", "ca"), problem))
    sidecar = next((d for d in documents if d.kind == "Sidecar"), None)
    if sidecar is None:
        return None
    if sidecar.data.get("tls") is None:
        needs = ["the inbound listener"] if sidecar.data.get("inbound") is not None else []
        mutual = [d for d in services if _tls_mode_written(d) == "mutual"]
        names = list(dict.fromkeys(name for d in mutual if (name := _raw_str(d, "name")) is not None))
        if len(names) > 1:
            needs.append(f"mutual-TLS services {_names(names)}")
        elif mutual:
            needs.append(f"mutual-TLS service {names[0]!r}" if names else "a mutual-TLS service")
        if needs:
            verb = "need" if len(needs) > 1 or len(names) > 1 else "needs"
            message = f"field required ({' and '.join(needs)} {verb} the workload certificate)"
            issues.append(sidecar.issue(("tls",), message))
        return None
    workload = _tls_section(sidecar, SidecarTls)
    if workload is None:
        return None
    cert, key, ca = (Path(os.path.join(directory, path)) for path in (workload.cert, workload.key, workload.ca))
    problems = check_workload_cert(cert, key, ca)
    issues += [sidecar.issue(("tls", field), message) for field, message in problems]
    return None if problems else spiffe_id_of(cert)


def _tls_mode_written(document: _Document) -> str | None:
    """A Service's ``tls.mode`` as written (``mutual`` when left out); ``None`` if ``tls`` is not a mapping."""
    tls = document.data.get("tls")
    if tls is None:
        return "mutual"
    if not isinstance(tls, dict):
        return None
    mode = tls.get("mode")
    if mode is None:
        return "mutual"
    return mode if isinstance(mode, str) else None


# --------------------------------------------------------------------------------------------------
# The directory.
# --------------------------------------------------------------------------------------------------


def _read_directory(directory: str, issues: list[ConfigIssue]) -> list[tuple[str, str, bytes]] | None:
    """``(name, path as found, content)`` per config file, sorted by name; ``None`` if DIR is unreadable."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        issues.append(ConfigIssue(directory, None, "", "config directory not found"))
        return None
    except NotADirectoryError:
        issues.append(ConfigIssue(directory, None, "", "not a directory (expected the config directory)"))
        return None
    except OSError as exc:
        issues.append(ConfigIssue(directory, None, "", f"cannot read config directory: {exc.strerror or exc}"))
        return None
    files = []
    for name in names:
        if name.startswith(".") or not name.endswith((".yaml", ".yml")):
            continue
        found = os.path.join(directory, name)
        if os.path.isdir(found):
            continue
        try:
            with open(found, "rb") as stream:
                files.append((name, found, stream.read()))
        except OSError as exc:
            issues.append(ConfigIssue(found, None, "", f"cannot read: {exc.strerror or exc}"))
    return files


def load_directory(directory: str | Path) -> Snapshot:
    """Read, parse and validate the config directory as a whole.

    Raises ``ConfigError`` listing every problem found in every file; returns a ``Snapshot`` only when
    there is none.
    """
    directory_text = os.fspath(directory)
    issues: list[ConfigIssue] = []
    unread: list[ConfigIssue] = []  # problems that cost documents: unreadable files, YAML errors
    files = _read_directory(directory_text, unread)
    documents: list[_Document] = []
    for _name, found, content in files or ():
        for document in _documents(found, content, issues, unread):
            _validate(document, issues)
            documents.append(document)
    # A lost document may be the Sidecar or a routed-to Service: then "no Sidecar" and "unknown
    # service" would only echo the problem already reported.
    complete = not unread
    issues += unread
    if files is not None:
        _check_sidecars(directory_text, documents, issues, complete=complete)
        _check_routes(documents, _check_services(documents, issues), issues, complete=complete)
    identity = _check_tls(directory_text, documents, issues)
    if issues:
        ordered = sorted(dict.fromkeys(issues), key=lambda issue: (issue.file, issue.line or 0))
        raise ConfigError(ordered)

    assert files is not None
    models = [d.model for d in documents]
    sidecar = next(m for m in models if isinstance(m, SidecarConfig))
    services = {m.name: m for m in models if isinstance(m, ServiceConfig)}
    routes = {m.host: m for m in models if isinstance(m, RouteConfig)}
    return Snapshot(
        directory=Path(directory),
        version=content_version((name, content) for name, _found, content in files),
        files=tuple(found for _name, found, _content in files),
        sidecar=sidecar,
        services=MappingProxyType(services),
        routes=MappingProxyType(routes),
        identity=identity,
    )
