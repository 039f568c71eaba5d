"""sidecar.config.watch: a change is noticed once it holds still, including one made between loading
the config and the watcher's first look."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import trio

from sidecar.config.loader import directory_version
from sidecar.config.watch import watch


class Watcher:
    """`watch` over a directory, with fast polls; counts the changes it reports."""

    def __init__(self, directory: Path, changed_since_load: Callable[[], bool] | None = None) -> None:
        self.directory = directory
        self.changed_since_load = changed_since_load
        self.calls = 0
        self.changed = trio.Event()

    async def on_change(self) -> None:
        self.calls += 1
        self.changed.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await watch(
            str(self.directory), list, self.on_change, interval=0.02, settle=0.02,
            changed_since_load=self.changed_since_load,
        )  # fmt: skip


async def test_an_edit_is_noticed(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("kind: Sidecar\nservice: a\n")
    watcher = Watcher(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await trio.sleep(0.1)
        config.write_text("kind: Sidecar\nservice: b\n")
        os.utime(config, ns=(1, 1))  # whatever the clock's granularity, the stat differs
        with trio.fail_after(5):
            await watcher.changed.wait()
        nursery.cancel_scope.cancel()
    assert watcher.calls == 1


async def test_an_edit_before_the_first_look_is_noticed_too(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("kind: Sidecar\nservice: a\n")
    loaded = directory_version(tmp_path)  # the config as the sidecar loaded it
    config.write_text("kind: Sidecar\nservice: b\n")  # edited before the watcher starts
    assert directory_version(tmp_path) != loaded
    watcher = Watcher(tmp_path, lambda: directory_version(tmp_path) != loaded)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        with trio.fail_after(5):
            await watcher.changed.wait()
        await trio.sleep(0.1)  # and only once: the first look already holds the edit
        nursery.cancel_scope.cancel()
    assert watcher.calls == 1


async def test_nothing_changed_since_load_calls_nothing(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("kind: Sidecar\nservice: a\n")
    loaded = directory_version(tmp_path)
    watcher = Watcher(tmp_path, lambda: directory_version(tmp_path) != loaded)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert watcher.calls == 0
