"""A progress bar for long work: images/s and ETA on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import threading
from typing import Any


class Progress:
    """Thread-safe counter shown as a tqdm bar when stderr is a TTY."""

    def __init__(self, total: int, desc: str = "embedding", enabled: bool | None = None) -> None:
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if enabled if enabled is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True,
                             smoothing=0.1)

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
