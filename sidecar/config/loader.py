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

All errors in one run: one mistake must not hide another until it is fixed, and must not be echoed
by errors that would go away with it. So:

- A YAML error costs only the document it is in: reading resumes at the next ``---`` line (which
  always starts a document). What can be read of the lost document, its ``kind:`` and ``name:``,
  still counts for the checks across documents. A file that is not UTF-8 is lost whole (its
  documents' ``kind`` and ``name`` still read); an unreadable file is lost with nothing known.
- Every document that loaded is validated, and the checks across documents run over all of them,
  valid or not, reading the data as written: a Route with a bad ``timeout`` still has its targets
  checked, a Service with a bad field still counts as defined.
- "route to unknown service X" is left out when X is the name of a Service (valid or not, lost or
  not) or of a document whose kind is missing, wrong or unreadable (``kind: Servce``), and while a
  Service has no readable name (it may be X). A target that is no valid name is the schema's error.
- "no Sidecar found" is left out while a document may be the Sidecar: one whose kind is missing or
  wrong, or a lost one whose kind is Sidecar or could not be read.
- Unknown fields and unknown services name the closest known one, when one is close.

Line numbers: an issue points at the line of the offending key; a missing key points at the line
where its parent mapping starts; a list item at the line where the item starts. A problem with no
line to point at (a missing or unreadable directory, no Sidecar in it, a file that cannot be read)
is ``FILE: message``, without a made-up line.
"""

from __future__ import annotations

import itertools
import os
import re
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
from .notation import normalize_host, parse_name
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


@dataclass(frozen=True)
class _Lost:
    """What could still be read of a document lost to a YAML error: its top-level ``kind`` (``None``
    when it is not one of ``KINDS`` or cannot be read) and ``name`` (``None`` when unreadable)."""

    kind: str | None
    name: str | None


_SEPARATOR_RE = re.compile(r"^---(?=[ \t\r\n]|$)", re.M)  # a `---` line starts a document, always
_LOST_KEY_RE = re.compile(r"""(?:^|[\s{,])(kind|name)[ \t]*:[ \t]+("[^"\n]*"|'[^'\n]*'|[^\s,{}\[\]#"']+)""")
_LINE_BREAK_RE = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as a line break


def _lost(text: str) -> _Lost:
    """The first ``kind: X`` and ``name: Y`` written in a lost document (block or flow style)."""
    found: dict[str, str] = {}
    for match in _LOST_KEY_RE.finditer(text):
        key, value = match.groups()
        found.setdefault(key, value[1:-1] if value[0] in "'\"" else value)
    kind, name = found.get("kind"), found.get("name")
    return _Lost(kind if kind in KINDS else None, name if name else None)


def _yaml_error_at(exc: BaseException, segment_start: int, padding: int, end: int) -> int | None:
    """Where in the file text a YAML error was found (``None``: not known)."""
    index: int | None = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        index = mark.index if mark is not None else None
    elif isinstance(exc, yaml.reader.ReaderError):
        index = exc.position
    if index is None:
        return None
    return min(max(segment_start, segment_start + index - padding), end)


def _compose(
    file: str, text: str, issues: list[ConfigIssue], lost: list[_Lost], start: int = 0, end: int | None = None
) -> Iterator[Node]:
    """The composed documents of ``text[start:end]``, reading past YAML errors.

    A YAML error costs only the document it is in: its problem is reported, what can be read of it
    goes to ``lost``, and composing starts again at the next ``---`` line (a document marker at the
    start of a line always starts a document in YAML: no scalar or flow collection may hold one).
    The text before ``start`` is replaced by as many line breaks, so marks keep the file's lines.
    """
    end = len(text) if end is None else end
    while start < end:
        padding = len(_LINE_BREAK_RE.findall(text, 0, start))
        segment = "\n" * padding + text[start:end]
        last_end = start  # where the last document composed here ends
        nodes = yaml.compose_all(segment, Loader=yaml.SafeLoader)
        try:
            for node in nodes:
                last_end = start + node.end_mark.index - padding if node is not None else last_end
                yield node
            return
        except (yaml.YAMLError, RecursionError) as exc:
            separators = [match.start() for match in _SEPARATOR_RE.finditer(text, start, end)]
            at = _yaml_error_at(exc, start, padding, end)
            if isinstance(exc, yaml.YAMLError) and at is not None:
                issues.append(_yaml_issue(file, segment, exc))
                # The failing document starts at the last `---` before the error (an error found
                # at a `---` belongs to the document before it); composing resumes at the next one.
                failed = max((s for s in separators if s < at), default=start)
                resume = min((s for s in separators if s >= at and s > start), default=end)
            else:  # nested too deeply for the composer, or no mark: the document after the last one read
                failed = min((s for s in separators if s >= last_end), default=end) if last_end > start else start
                resume = min((s for s in separators if s > failed), default=end)
                line = len(_LINE_BREAK_RE.findall(text, 0, failed)) + 1
                problem = "document nested too deeply" if isinstance(exc, RecursionError) else f"invalid YAML: {exc}"
                issues.append(ConfigIssue(file, line, "yaml", problem.splitlines()[0]))
            if isinstance(exc, yaml.reader.ReaderError):  # found before any document was composed
                yield from _compose(file, text, issues, lost, start, failed)
            lost.append(_lost(text[failed:resume]))
            start = resume


def _documents(file: str, content: bytes, issues: list[ConfigIssue], lost: list[_Lost]) -> Iterator[_Document]:
    """The non-empty documents of one file, converted; what can be read of those lost goes to ``lost``.

    A file that is not UTF-8 is lost whole (its ``kind`` and ``name`` lines still read, per document).
    """
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        issues.append(ConfigIssue(file, line, "yaml", "file is not valid UTF-8"))
        text = content.decode("utf-8-sig", errors="replace")
        bounds = [0, *(m.start() for m in _SEPARATOR_RE.finditer(text)), len(text)]
        lost += [_lost(text[a:b]) for a, b in itertools.pairwise(bounds) if text[a:b].strip()]
        return
    for node in _compose(file, text, issues, lost):
        if node is None or _is_empty(node):
            continue
        document = _Document(file)
        try:
            document.data = _Converter(document, issues).convert(node, ())
        except (_TooLarge, RecursionError) as exc:
            line = node.start_mark.line + 1
            problem = "too large (check aliases)" if isinstance(exc, _TooLarge) else "nested too deeply"
            issues.append(ConfigIssue(file, line, "yaml", f"document {problem}"))
            lost.append(_lost(text[node.start_mark.index : node.end_mark.index]))
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


def _check_sidecars(directory: str, documents: list[_Document], lost: list[_Lost], issues: list[ConfigIssue]) -> None:
    """Exactly one Sidecar. "No Sidecar" is left out while a document may be the Sidecar meant: one
    lost (or a file unread) whose kind is Sidecar or unknown, or one whose kind is missing or wrong."""
    sidecars = [d for d in documents if d.kind == "Sidecar"]
    maybe = any(d.kind is None for d in documents) or any(gone.kind in (None, "Sidecar") for gone in lost)
    if not sidecars and not maybe:
        issues.append(ConfigIssue(directory, None, "", "no Sidecar found (exactly one is required)"))
    for extra in sidecars[1:]:
        first = sidecars[0].where(("kind",))
        issues.append(extra.issue(("kind",), f"more than one Sidecar (first at {first})"))


def _check_services(documents: list[_Document], issues: list[ConfigIssue]) -> None:
    """Unique names (valid document or not), unique hosts."""
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


def _check_listen(documents: list[_Document], issues: list[ConfigIssue]) -> None:
    """A tcp Service's ``listen`` is a port of its own: not another service's, not a listener's."""
    taken: dict[tuple[str, int], str] = {}
    sidecar = next((d.model for d in documents if isinstance(d.model, SidecarConfig)), None)
    if sidecar is not None:
        for name in ("outbound", "admin", "inbound"):
            section = getattr(sidecar, name)
            if section is not None:
                taken[section.listen.host, section.listen.port] = f"the {name} listener"
    for document in documents:
        service = document.model
        if not isinstance(service, ServiceConfig) or service.listen is None:
            continue
        listen = service.listen
        for (host, port), owner in taken.items():
            overlaps = host == listen.host or "0.0.0.0" in (host, listen.host) or "::" in (host, listen.host)
            if port == listen.port and overlaps:
                issues.append(document.issue(("listen",), f"{listen} is already taken by {owner}"))
                break
        else:
            taken[listen.host, listen.port] = f"service {service.name!r}"


def _service_names(documents: list[_Document], lost: list[_Lost]) -> tuple[set[str], bool]:
    """The names a route may mean, and whether a Service has no readable name.

    The names: the ``name`` of every Service, valid or not, and of every document, loaded or lost,
    whose kind is missing, wrong or unreadable.
    """
    names = {name for d in documents if d.kind in ("Service", None) and (name := _raw_str(d, "name")) is not None}
    names.update(gone.name for gone in lost if gone.kind in ("Service", None) and gone.name is not None)
    unnamed = any(d.kind == "Service" and _raw_str(d, "name") is None for d in documents)
    unnamed = unnamed or any(gone.kind == "Service" and gone.name is None for gone in lost)
    return names, unnamed


def _check_routes(documents: list[_Document], lost: list[_Lost], issues: list[ConfigIssue]) -> None:
    """One Route per host; every target names a Service.

    Targets are read from the data as written, so a Route with other errors still has them checked;
    a target whose own ``service`` is wrong is reported by the schema alone. "Unknown service" is
    left out while a Service (loaded or lost) has no readable name: it may be that one.
    """
    services, unnamed = _service_names(documents, lost)
    models = [d.model for d in documents if isinstance(d.model, ServiceConfig)]
    tcp = {service.name for service in models if service.protocol == "tcp"}
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
        if unnamed:
            continue
        for path, service in _targets(document.data):
            if service not in services:
                issues.append(document.issue(path, f"route to unknown service {service!r}{_hint(service, services)}"))
            elif service in tcp:
                issues.append(document.issue(path, f"service {service!r} has protocol tcp: routes carry HTTP only"))


def _hint(name: str, names: set[str]) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _targets(data: dict[str, Any]) -> Iterator[tuple[FieldPath, str]]:
    """``(path, service)`` of every target of a Route as written whose ``service`` is a valid name."""
    rules = data.get("rules")
    for r, rule in enumerate(rules if isinstance(rules, list) else ()):
        to = rule.get("to") if isinstance(rule, dict) else None
        for t, target in enumerate(to if isinstance(to, list) else ()):
            service = target.get("service") if isinstance(target, dict) else None
            try:
                yield ("rules", r, "to", t, "service"), parse_name(service)
            except ValueError:
                continue


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


def _read_directory(
    directory: str, issues: list[ConfigIssue], lost: list[_Lost]
) -> list[tuple[str, str, bytes]] | None:
    """``(name, path as found, content)`` per config file, sorted by name; ``None`` if DIR is unreadable.

    A file that cannot be read is a lost document of which nothing is known.
    """
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
            lost.append(_Lost(None, None))
    return files


def directory_version(directory: str | Path) -> str | None:
    """The `content_version` the config files of `directory` have now, as `load_directory` would
    compute it (None when the directory cannot be read): whether it still holds what was loaded."""
    files = _read_directory(os.fspath(directory), [], [])
    if files is None:
        return None
    return content_version((name, content) for name, _found, content in files)


def load_directory(directory: str | Path) -> Snapshot:
    """Read, parse and validate the config directory as a whole.

    Raises ``ConfigError`` listing every problem found in every file; returns a ``Snapshot`` only when
    there is none.
    """
    directory_text = os.fspath(directory)
    issues: list[ConfigIssue] = []
    lost: list[_Lost] = []  # what is known of the documents lost to YAML errors and unreadable files
    files = _read_directory(directory_text, issues, lost)
    documents: list[_Document] = []
    for _name, found, content in files or ():
        for document in _documents(found, content, issues, lost):
            _validate(document, issues)
            documents.append(document)
    if files is not None:
        _check_sidecars(directory_text, documents, lost, issues)
        _check_services(documents, issues)
        _check_listen(documents, issues)
        _check_routes(documents, lost, issues)
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
