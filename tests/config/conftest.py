"""Fixtures for the config tests: a scratch config directory that writes files and collects issues."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from sidecar.config import ConfigError, Snapshot, load_directory

MINIMAL_SIDECAR = """
kind: Sidecar
service: frontend
"""


class ConfigDir:
    """A config directory under test; ``write`` dedents, so line 1 is the first line written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, name: str, text: str) -> str:
        """Write ``name`` and return its path as the loader reports it (DIR joined with name)."""
        (self.path / name).write_text(textwrap.dedent(text).lstrip("\n"))
        return os.path.join(str(self.path), name)

    def with_sidecar(self) -> ConfigDir:
        self.write("sidecar.yaml", MINIMAL_SIDECAR)
        return self

    def load(self) -> Snapshot:
        return load_directory(self.path)

    def issues(self) -> list[str]:
        """Every issue line the loader reports; fails the test if the directory loads."""
        with pytest.raises(ConfigError) as caught:
            load_directory(self.path)
        return [str(issue) for issue in caught.value.issues]


@pytest.fixture
def config_dir(tmp_path: Path) -> ConfigDir:
    directory = tmp_path / "mesh"
    directory.mkdir()
    return ConfigDir(directory)
