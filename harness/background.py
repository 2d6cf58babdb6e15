"""A call on a daemon thread whose outcome is handed back to the caller's thread."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Background:
    """Runs ``fn()`` on a daemon thread at once; ``result()`` returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any], name: str = "background"):
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._box["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread by result()
            self._box["error"] = exc

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True once ``fn`` has returned or raised."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> Any:
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]
