"""Keeping a run's lease on its rotation alive while the run lives, paused and sleeping included.

Liveness rests on the lease alone, not on a host name and a process id: a run that is killed, frozen or cut off from
the journal stops renewing, and once its lease expires another run may resume or roll the rotation back. The run
itself checks its lease at every step (every journal write does), so a run that lost it stops before acting again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rotation.journal import Journal, Lease

log = logging.getLogger(__name__)


@contextmanager
def kept(journal: Journal, lease: Lease) -> Iterator[threading.Event]:
    """Renew ``lease`` every third of its length until the block ends, then release it.

    Yields an event that is set if the lease was lost (another run took the rotation over).
    """
    stop, lost = threading.Event(), threading.Event()

    def renew() -> None:
        while not stop.wait(lease.seconds / 3):
            try:
                if not journal.renew(lease):
                    lost.set()
                    return
            except Exception as exc:  # an unreachable journal: keep trying until the lease runs out
                log.warning("Could not renew the lease on rotation %s: %s", lease.rotation_id, type(exc).__name__)

    thread = threading.Thread(target=renew, name=f"lease-{lease.rotation_id[:8]}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join()
        if not lost.is_set():
            journal.release(lease)
