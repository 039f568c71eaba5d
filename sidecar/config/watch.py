"""Noticing changes to the config directory and the files it names (docs: operations/lifecycle.md).

A poll, not inotify: every `POLL_INTERVAL` the watcher takes a fingerprint, the `stat` (following
symlinks) of each `*.yaml`/`*.yml` directly in the directory and of each certificate, key and CA
file the config names. That costs microseconds for the handful of files a sidecar has, needs no
dependency, and sees every way a file is replaced:
- a Kubernetes ConfigMap or Secret volume swaps its `..data` symlink atomically: the file names stay,
  but what they resolve to changes (new inode and mtime);
- an editor writes a temp file and renames it (temp and backup files are not `*.yaml`; dotfiles are
  skipped, as the loader skips them);
- a certificate rotation rewrites files outside the directory.

A change must hold still for `SETTLE` seconds (two polls agreeing) before the reload is asked for, so
a file caught half-written is not read; a reload that still finds a broken file (a key that does
not match its certificate, say) is rejected whole by the loader, and the next change tries again.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable

import trio

POLL_INTERVAL = 0.5  # seconds between two looks
SETTLE = 0.3  # seconds a changed fingerprint must stay the same before the reload

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(directory: str, files: Iterable[str]) -> Fingerprint:
    """(path, inode, size, mtime) of every config file in `directory` and of `files`; a file that
    cannot be read shows as zeros."""
    paths = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for name in names:
        if name.startswith(".") or not name.endswith((".yaml", ".yml")):
            continue
        paths.append(os.path.join(directory, name))
    paths += sorted(set(files))
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, 0, 0, 0))
            continue
        out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


async def watch(
    directory: str,
    files: Callable[[], Iterable[str]],
    on_change: Callable[[], Awaitable[None]],
    *,
    interval: float = POLL_INTERVAL,
    settle: float = SETTLE,
    changed_since_load: Callable[[], bool] | None = None,
) -> None:
    """Call `on_change` whenever the directory's config files or `files()` (the files the current
    config names) change and then hold still; forever. `changed_since_load` is asked once, after
    the first look: a change made between loading the config and that look (a quick edit right after
    start) is in the first fingerprint already, and would otherwise go unnoticed."""

    async def look() -> Fingerprint:  # in a thread: a stat on a network filesystem may be slow
        return await trio.to_thread.run_sync(fingerprint, directory, list(files()))

    last = await look()
    if changed_since_load is not None and await trio.to_thread.run_sync(changed_since_load):
        await on_change()
        last = await look()
    while True:
        await trio.sleep(interval)
        current = await look()
        if current == last:
            continue
        while True:  # wait for the writer to finish
            await trio.sleep(settle)
            again = await look()
            if again == current:
                break
            current = again
        await on_change()
        last = current  # a change made during the reload shows at the next look
