"""A clean stop on Ctrl-C (SIGINT) or SIGTERM at any moment: one line, exit 130 (SIGINT) or
143 (SIGTERM), and no partial output.

`install(name)` blocks both signals in the calling thread - and so in every thread and process
started after it (Orbax's, XLA's, worker processes) - and waits for them on a thread of its
own, which, whatever the main thread is doing (importing, loading, compiling, sampling,
writing), prints `NAME: interrupted`, removes every temporary output `register`ed and not yet
renamed into place, kills child processes and exits at once. Outputs are written under a
temporary name and renamed when complete, so this leaves nothing half-written.

`pause_point(phase)`: with EMO_JAX_PAUSE=phase in the environment, says `paused at PHASE` on
stderr and sleeps, so a test can send a signal in that phase: start (before the command's
imports), sample (generate, after each clip), write (generate, before the outputs are closed).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

SIGNALS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
PAUSE_ENV = "EMO_JAX_PAUSE"

_lock = threading.Lock()
_temporary: set[Path] = set()


def register(path: str | Path) -> None:
    """`path` (a file or folder) is a partial output until `unregister`ed: a stop removes it."""
    with _lock:
        _temporary.add(Path(path))


def unregister(path: str | Path) -> None:
    """`path` is complete (renamed into place) or already removed."""
    with _lock:
        _temporary.discard(Path(path))


def _remove_temporary() -> None:
    with _lock:
        for path in _temporary:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        _temporary.clear()


def _wait(name: str) -> None:
    signum = signal.sigwait(set(SIGNALS))
    code, word = SIGNALS[signal.Signals(signum)]
    _remove_temporary()
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    newline = "\n" if sys.stderr.isatty() else ""  # after a progress bar's unfinished line
    os.write(2, f"{newline}{name}: {word}\n".encode())
    os._exit(code)


def install(name: str) -> None:
    """From now on SIGINT / SIGTERM stop the process cleanly (see the module doc); call it from
    the main thread before starting any other thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
    threading.Thread(target=_wait, args=(name,), name="emo-jax-stop", daemon=True).start()


def pause_point(phase: str) -> None:
    """Sleeps here if EMO_JAX_PAUSE names `phase` (tests send a signal meanwhile)."""
    if os.environ.get(PAUSE_ENV) == phase:
        print(f"emo-jax: paused at {phase}", file=sys.stderr, flush=True)
        time.sleep(60)
