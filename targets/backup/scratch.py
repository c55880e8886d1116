"""The restore drill's scratch folder: private, removed when the drill ends, and by the next drill if a drill was
killed before it could remove it (a scratch store holds a decryptable copy of every restored secret).

Each drill holds an exclusive ``flock`` on a file in its folder while it runs; the kernel releases it when the
process dies, however it dies. A folder whose lock can be taken belongs to no live drill.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "rotate-drill-"
_OWNER = ".owner"


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A new private folder (0700) for one drill, removed when the block ends; left-overs of dead drills first."""
    remove_abandoned()
    # Cleanup errors ignored: a sweeper may remove the folder first, in the moment after the lock is released.
    with (
        tempfile.TemporaryDirectory(prefix=PREFIX, ignore_cleanup_errors=True) as name,
        open(Path(name) / _OWNER, "w") as owner,
    ):
        fcntl.flock(owner, fcntl.LOCK_EX)
        yield Path(name)


def remove_abandoned() -> list[Path]:
    """Remove the scratch folders of drills that died; returns them. A folder without its lock file yet is a drill
    that is starting (nothing restored into it): left alone."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            with open(folder / _OWNER) as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder)
        except (FileNotFoundError, BlockingIOError, PermissionError):
            continue
        removed.append(folder)
    return removed
