"""One writer per output: a lock object under a run's output URI.

Long, resumable steps (SRS training, the teacher, sentiment) take ``<output>/.srs-lock.json``
before any work. Writing it also proves the output is writable, before hours of work rather
than after. A second run on the same output is refused with the holder's host, pid and age.

A lock is stale, and taken over with a warning, when its holder cannot be running any more:

* same host, and its pid is this process's own or no longer alive (a restarted container of
  a PyTorchJob keeps its pod name, so its host, and often its pid);
* any host, and its heartbeat (refreshed every ``HEARTBEAT_SECONDS``) is older than
  ``SRS_LOCK_STALE_SECONDS`` (default 45), e.g. after a pod was evicted and a retried step
  runs elsewhere.

Object stores have no compare-and-swap here, so two runs starting within the same instant are
told apart by reading the lock back after writing it: the one whose token is not there stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from srs_core import store
from srs_core.errors import ConfigError, DiskFullError, StoreError, StoreNotFound

log = logging.getLogger(__name__)

LOCK_NAME = ".srs-lock.json"
HEARTBEAT_SECONDS = 10.0
STALE_ENV = "SRS_LOCK_STALE_SECONDS"
_SETTLE_SECONDS = 0.2  # time for a concurrent writer's lock to land before we read ours back


def _stale_after() -> float:
    text = os.environ.get(STALE_ENV, "")
    try:
        value = float(text) if text else 45.0
    except ValueError:
        raise ConfigError(f"{STALE_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{STALE_ENV} must be > 0, got {value}")
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class OutputLocked(ConfigError):
    """Another live run holds the output (a usage problem: choose another output)."""


class RunLock:
    """Context manager holding ``<output_uri>/.srs-lock.json`` while a step writes there."""

    def __init__(self, output_uri: str, command: str) -> None:
        self.uri = store.join(output_uri, LOCK_NAME)
        self.output_uri = output_uri
        self.record = {
            "host": socket.gethostname(), "pid": os.getpid(), "command": command,
            "token": uuid.uuid4().hex, "started": time.time(), "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(store.read_text(self.uri))
        except StoreNotFound:
            return None
        except OSError as exc:  # e.g. a part of the output path is a file
            raise StoreError(f"the output {self.output_uri} is not writable ({exc}); choose "
                             "another output location") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is not a lock this program wrote; replacing it", self.uri)
            return None

    def _is_stale(self, holder: dict) -> str | None:
        """Why ``holder`` cannot be running any more, or None when it may be."""
        age = time.time() - float(holder.get("heartbeat", 0))
        if holder.get("host") == self.record["host"]:
            pid = int(holder.get("pid", -1))
            if pid == os.getpid():
                return "an earlier process of this container (same host and pid)"
            if not _pid_alive(pid):
                return f"pid {pid} on this host is gone"
        if age > _stale_after():
            return f"its last heartbeat is {age:.0f}s old (> {STALE_ENV}={_stale_after():g})"
        return None

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        try:
            store.write_text(self.uri, json.dumps(self.record))
        except DiskFullError:
            raise  # says what to do already
        except (OSError, StoreError) as exc:
            raise StoreError(f"the output {self.output_uri} is not writable ({exc}); choose "
                             "another output location or fix its permissions") from None

    def acquire(self) -> RunLock:
        holder = self._read()
        if holder is not None:
            reason = self._is_stale(holder)
            if reason is None:
                age = time.time() - float(holder.get("started", time.time()))
                raise OutputLocked(
                    f"{self.output_uri} is in use by another run: {holder.get('command')!r} on "
                    f"host {holder.get('host')} pid {holder.get('pid')}, started {age:.0f}s ago "
                    f"(lock {self.uri}). Wait for it, choose another output, or delete the lock "
                    "if that run is certainly dead."
                )
            log.warning("taking over the stale lock %s of host %s pid %s: %s", self.uri,
                        holder.get("host"), holder.get("pid"), reason)
        self._write()
        time.sleep(_SETTLE_SECONDS)
        now = self._read()
        if now is None or now.get("token") != self.record["token"]:
            other = now or {}
            raise OutputLocked(f"{self.output_uri}: another run took it at the same moment "
                               f"(host {other.get('host')} pid {other.get('pid')})")
        self._thread = threading.Thread(target=self._beat, name="srs-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except StoreError as exc:  # the run goes on; a stale lock is only a weaker guard
                log.warning("could not refresh %s: %s", self.uri, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS)
        holder = self._read()
        if holder is not None and holder.get("token") == self.record["token"]:
            store.delete(self.uri)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
