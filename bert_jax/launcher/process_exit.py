"""How an entry point ends on a user-facing error: one line on stderr, then exit, even when background writers
cannot be stopped.

After a failed write to object storage, orbax's save thread can sit in tensorstore's retries (32 attempts, backoff
up to 32 s) and, being a non-daemon thread, keep the interpreter from exiting for many minutes after the job has
said why it stopped. Here the message is printed first; if non-daemon threads are still alive a few seconds later,
the process exits without waiting for them (nothing complete depends on them: the failed save is incomplete by
definition and is removed at the next start).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import NoReturn

GRACE_SECONDS = 5.0


def exit_with_error(program: str, error: BaseException, grace_seconds: float = GRACE_SECONDS) -> NoReturn:
    """Prints `<program>: error: <error>` and exits with status 1 within `grace_seconds` of background threads."""
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace_seconds
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
        except Exception:  # some libraries' threads raise from join when the timeout passes (orbax's do)
            pass
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread() for t in threading.enumerate()):
        sys.stdout.flush()
        os._exit(1)
    raise SystemExit(1)
