"""The layers of sidecar depend only downward, and no group of its modules imports each other.

Every `import` and `from ... import` in sidecar/ counts, wherever it is written: inside a function,
and under `if TYPE_CHECKING:` too (a type-only import still ties two modules together: neither can
be read, changed or tested without the other). The module graph is read with `ast`, without
importing anything.

`LAYERS` is the intended order, lowest first. A module may import from its own layer and from the
layers below it, never from a layer above; within a layer the imports must not form a cycle either.
A layer names modules exactly (`sidecar.tls`) or a package with everything in it (`sidecar.http.*`);
every module must belong to exactly one layer, so a new module has to be placed on purpose.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import sidecar

ROOT = Path(sidecar.__file__).parent

LAYERS: list[tuple[str, list[str]]] = [
    # Process log lines on stdout: nothing of sidecar, so every layer above may log.
    ("logger", ["sidecar.logger"]),
    # Sans-IO messages and codecs: no trio, nothing else of sidecar (see tests/http/test_no_trio.py).
    ("http", ["sidecar.http.*"]),
    # Data: the validated config and the TLS material and identities (contexts, SPIFFE IDs, allow lists).
    ("config", ["sidecar", "sidecar.config.*", "sidecar.tls"]),
    # Transparent capture's nat rules: built from the config (sans-IO) and applied with iptables.
    ("capture", ["sidecar.capture.*"]),
    # Bytes meet trio streams: sockets, TLS streams, HTTP/1.1 and HTTP/2 servers and client connections.
    # Servers hand requests to a `Handler` they are given; client connections report to an owner
    # through the protocols they define.
    ("transport", ["sidecar.transport.*"]),
    # Upstream services: endpoints, pools (which open transport client connections), balancers,
    # breakers, retries, outlier detection and health checks, the registry, one call.
    ("upstream", ["sidecar.upstream.*"]),
    # What requests leave behind: metrics, access log, spans, the Prometheus exposition.
    ("telemetry", ["sidecar.telemetry.*"]),
    # Layers around a handler: observe, local replies, authorization, forwarding, routing.
    ("pipeline", ["sidecar.pipeline.*"]),
    # Each listener's stack composed from the pipeline, and the TLS policy of a snapshot.
    ("listeners", ["sidecar.listeners.*", "sidecar.security"]),
    # The process: the runtime and its reloads, the command line, the demo and its tools.
    (
        "process",
        ["sidecar.server", "sidecar.cli", "sidecar.__main__", "sidecar.certs", "sidecar.demo", "sidecar.demo_traces"],
    ),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ["sidecar", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The sidecar modules `module` imports (a name imported from a package counts as its module
    when it is one, else as the package)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "sidecar" and not source.startswith("sidecar."):
                continue
            for alias in node.names:
                name = f"{source}.{alias.name}"
                found.add(name if name in MODULES else source)
    found.discard(module)
    return {name for name in found if name in MODULES}


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _layer_of(module: str) -> int:
    """The index in LAYERS of the layer that names `module` (an exact name wins over a package)."""
    exact = [i for i, (_, names) in enumerate(LAYERS) if module in names]
    if exact:
        return exact[0]
    packages = [
        (len(name), i)
        for i, (_, names) in enumerate(LAYERS)
        for name in names
        if name.endswith(".*") and (module == name[:-2] or fnmatchcase(module, name))
    ]
    assert packages, f"{module} belongs to no layer: add it to LAYERS in {__name__}"
    return max(packages)[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def test_the_graph_is_read() -> None:
    """A sanity check of the reader itself, on imports known to exist."""
    assert "sidecar.transport.h1_server" in GRAPH["sidecar.server"]
    assert "sidecar.http.message" in GRAPH["sidecar.transport.tunnel"]  # a relative import
    assert "sidecar.telemetry.logging" in GRAPH["sidecar.cli"]  # imported inside a function


def test_every_module_belongs_to_one_layer() -> None:
    for module in MODULES:
        _layer_of(module)
    names = [name for _, layer in LAYERS for name in layer]
    assert len(names) == len(set(names)), "a name appears in two layers"


def test_layers_depend_only_downward() -> None:
    upward = [
        f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} ({LAYERS[_layer_of(target)][0]})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "modules that import each other (TYPE_CHECKING imports included):\n" + "\n".join(
        str(cycle) for cycle in cycles
    )


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set(), "g": {"g"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
