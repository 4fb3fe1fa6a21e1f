"""How far a warm has got: counters the fetcher bumps, and a periodic log line.

A warm of tens of GB runs for minutes, unattended; a line every few seconds
(files, bytes, rate, time left) shows it is alive and how long it will take.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    files_total: int = 0
    bytes_total: int = 0
    files_fetched: int = 0
    bytes_fetched: int = 0  # bytes of files completed and verified
    files_present: int = 0  # already in the cache (or written meanwhile by another process)
    bytes_present: int = 0
    files_linked: int = 0  # linked from a lower layer (--lower), not fetched
    bytes_linked: int = 0
    bytes_transferred: int = 0  # every byte received, partial files and retries included
    retries: int = 0
    throttled: int = 0  # requests S3 answered "slow down" and fetch tried again (the SDK's own retries aside)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def snapshot(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        done_bytes = self.bytes_fetched + self.bytes_present + self.bytes_linked
        rate = self.bytes_transferred / seconds
        left = max(self.bytes_total - done_bytes, 0)
        return {
            "files_done": self.files_fetched + self.files_present + self.files_linked,
            "files_total": self.files_total,
            "bytes_done": done_bytes,
            "bytes_total": self.bytes_total,
            "mb_per_s": round(rate / 1e6, 2),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "retries": self.retries,
            "throttled": self.throttled,
        }

    def summary(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "files_fetched": self.files_fetched,
            "bytes_fetched": self.bytes_fetched,
            "files_present": self.files_present,
            "bytes_present": self.bytes_present,
            **({"files_linked": self.files_linked, "bytes_linked": self.bytes_linked} if self.files_linked else {}),
            "retries": self.retries,
            "throttled": self.throttled,
            "seconds": round(seconds, 3),
            "mb_per_s": round(self.bytes_fetched / seconds / 1e6, 2) if seconds > 0 else 0.0,
        }


async def report_periodically(progress: Progress, log: Any, interval: float) -> None:
    """Log a progress line every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        log.info("progress", **progress.snapshot())
