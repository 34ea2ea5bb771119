"""Peak resident memory of the current process while a block runs, polled from /proc/self/statm.

(ru_maxrss is not usable for a subprocess: Linux keeps the parent's high-water mark across fork + exec.)
"""

from __future__ import annotations

import resource
import threading
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRSS:
    """with PeakRSS() as m: ...  → m.peak (MiB) and m.rise (MiB above the RSS at entry)."""

    def __enter__(self):
        self.base = self.peak = rss_mib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())
        self.rise = self.peak - self.base
        return False
