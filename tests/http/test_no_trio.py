"""The http package is pure data and codecs: nothing under sidecar/http may depend on trio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sidecar.http

HTTP_DIR = Path(sidecar.http.__file__).parent
MODULES = sorted(HTTP_DIR.glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module)
            elif node.level > 0:
                names.add("." * node.level + (node.module or ""))
    return names


def test_http_package_has_the_expected_modules() -> None:
    assert {p.name for p in MODULES} >= {"__init__.py", "errors.py", "h1.py", "headers.py", "message.py"}


def test_no_source_file_imports_trio() -> None:
    for path in MODULES:
        for name in _imported_modules(path):
            root = name.split(".")[0]
            assert root not in {"trio", "anyio", "sniffio"}, f"{path.name} imports {name}"
            # Relative imports must stay inside sidecar.http (no `from ..transport import ...`).
            assert not name.startswith(".."), f"{path.name} imports {name} from outside sidecar/http"


def test_importing_http_modules_does_not_load_trio() -> None:
    names = [f"sidecar.http.{p.stem}" for p in MODULES if p.stem != "__init__"]
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in names)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'anyio', 'sniffio'))\n"
        + "print(','.join(bad))\n"
        + "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"trio loaded by sidecar.http: {result.stdout} {result.stderr}"
