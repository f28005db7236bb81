"""Progress of long work, the same for every stage: a live bar in a terminal, plain lines in job logs.

::

    with Progress("dedup: signing", unit="docs", total_bytes=size, tracker=tracker) as p:
        for batch in batches:
            ...
            p.update(len(batch), nbytes)

* stderr is a terminal: a tqdm bar (items or bytes, rate, ETA when the total is known);
* otherwise (a job log, a pipe, tests): one plain log line every ``ELECTRA_DS_PROGRESS_SECONDS`` seconds
  (default 30) and one at the end, e.g. ``dedup: signing: 1.2M docs, 3.4 GiB in 5m12s (3.9k docs/s,
  11.2 MiB/s), 45% of 7.5 GiB, ETA 6m20s``;
* ``ELECTRA_DS_PROGRESS=bar|log|off`` forces a mode (``off``: nothing at all);
* with a ``tracker`` (the stage's MLflow run), every plain report also logs the rates of the last interval
  as metrics ``progress.<name>.<unit>_per_s`` (and ``.bytes_per_s``);
* ``heartbeat=True``: a thread reports even while nothing is counted (a library call that gives no
  callback, e.g. sentencepiece training), so a working stage never looks hung.

The ETA comes from the average rate since the start, on items when their total is known, else on bytes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

from electra_ds.common.fileio import open_text
from electra_ds.common.userfiles import decode_error, parse_json_line

log = logging.getLogger("electra_ds.progress")

DEFAULT_SECONDS = 30.0
COMPRESSED = (".gz", ".zst", ".bz2", ".xz", ".parquet")


def interval_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("ELECTRA_DS_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def mode(stream=None) -> str:
    """``bar`` (a terminal), ``log`` (anything else) or ``off``; ``ELECTRA_DS_PROGRESS`` overrides."""
    forced = os.environ.get("ELECTRA_DS_PROGRESS", "").strip().lower()
    if forced in ("bar", "log", "off"):
        return forced
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):
        return "log"


def format_count(n: float) -> str:
    n = float(n)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def format_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def file_bytes(path) -> int | None:
    """Size of an uncompressed input file (the total for an ETA on bytes), None when unknown or compressed."""
    try:
        path = Path(path)
        return None if path.name.endswith(COMPRESSED) else path.stat().st_size
    except (OSError, TypeError):
        return None


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text.strip()).strip("_.") or "work"


class Progress:
    """Counts items (and bytes) of one piece of work and reports them; see the module docstring."""

    def __init__(self, name: str, *, total: int | None = None, unit: str = "docs", total_bytes: int | None = None,
                 bytes_unit: str = "B", tracker=None, heartbeat: bool = False, logger: logging.Logger | None = None,
                 seconds: float | None = None, stream=None):
        self.name, self.unit, self.bytes_unit = name, unit, bytes_unit
        self.total = total if total is None else int(total)
        self.total_bytes = total_bytes if total_bytes is None else int(total_bytes)
        self.tracker, self.log = tracker, logger or log
        self.seconds = interval_seconds() if seconds is None else seconds
        self.stream = stream or sys.stderr
        self.mode = mode(self.stream)
        self.done = self.bytes = 0
        self.started = self._last = time.monotonic()
        self._last_done = self._last_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        self._metric = f"progress.{_metric_name(name)}"
        self._bytes_key = "bytes" if bytes_unit == "B" else _metric_name(bytes_unit)
        self._rates = (0.0, 0.0)
        self._bar_on_bytes = False
        if self.mode == "bar":
            from tqdm import tqdm

            on_bytes = self.total is None and self.total_bytes is not None and bytes_unit == "B"
            self._bar_on_bytes = on_bytes
            self._bar = tqdm(total=self.total_bytes if on_bytes else self.total, desc=name,
                             unit="B" if on_bytes else f" {unit}",
                             unit_scale=on_bytes or self.total is None or self.total >= 10_000,
                             unit_divisor=1024 if on_bytes else 1000, file=self.stream, dynamic_ncols=True,
                             mininterval=0.5, leave=True)
        self._thread = None
        self._stop = threading.Event()
        if heartbeat and self.mode != "off":
            self._thread = threading.Thread(target=self._beat, name=f"progress {name}", daemon=True)
            self._thread.start()

    # -- counting ---------------------------------------------------------------------------------
    def update(self, n: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            self.done += n
            self.bytes += nbytes
            if self._bar is not None:
                self._bar.update(nbytes if self._bar_on_bytes else n)
                if (nbytes and not self._bar_on_bytes) or (n and self._bar_on_bytes):
                    self._bar.set_postfix_str(self._secondary(), refresh=False)
            elif self.mode == "log" and time.monotonic() - self._last >= self.seconds:
                self._report()

    def _secondary(self) -> str:
        if self._bar_on_bytes:
            return f"{format_count(self.done)} {self.unit}"
        return self._amount(self.bytes, self.bytes_unit)

    @staticmethod
    def _amount(value: float, unit: str) -> str:
        return format_bytes(value) if unit == "B" else f"{format_count(value)} {unit}"

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds or 1.0)):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                elif time.monotonic() - self._last >= self.seconds:
                    self._report()

    # -- reporting --------------------------------------------------------------------------------
    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.total and self.done:
            return elapsed / self.done * max(0, self.total - self.done)
        if self.total_bytes and self.bytes:
            return elapsed / self.bytes * max(0, self.total_bytes - self.bytes)
        return None

    def line(self, final: bool = False) -> str:
        now = time.monotonic()
        elapsed = now - self.started
        if final:
            rate, brate = self.done / max(elapsed, 1e-9), self.bytes / max(elapsed, 1e-9)
        else:
            span = max(now - self._last, 1e-9)
            rate, brate = (self.done - self._last_done) / span, (self.bytes - self._last_bytes) / span
        if not self.done and not self.bytes:  # nothing counted (yet): a heartbeat
            self._rates = (0.0, 0.0)
            return f"{self.name}: {'done in' if final else 'running for'} {format_seconds(elapsed)}"
        amount = f"{format_count(self.done)} {self.unit}"
        rates = f"{format_count(rate)} {self.unit}/s"
        if self.bytes or self.total_bytes:
            amount += f", {self._amount(self.bytes, self.bytes_unit)}"
            rates += f", {self._amount(brate, self.bytes_unit)}/s"
        text = f"{self.name}: {'done, ' if final else ''}{amount} in {format_seconds(elapsed)} ({rates})"
        if not final:
            if self.total:
                text += f", {100 * self.done / self.total:.0f}% of {format_count(self.total)}"
            elif self.total_bytes:
                text += f", {100 * self.bytes / self.total_bytes:.0f}% of " \
                        f"{self._amount(self.total_bytes, self.bytes_unit)}"
            eta = self.eta()
            if eta is not None:
                text += f", ETA {format_seconds(eta)}"
        self._rates = (rate, brate)
        return text

    def _report(self, final: bool = False) -> None:
        self.log.info("%s", self.line(final))
        rate, brate = self._rates
        if self.tracker is not None and not final:
            metrics = {f"{self._metric}.{_metric_name(self.unit)}_per_s": rate}
            if self.bytes:
                metrics[f"{self._metric}.{self._bytes_key}_per_s"] = brate
            try:
                self.tracker.log_metrics(metrics, step=int(self.done))
            except Exception as exc:  # progress must never stop the work
                self.log.debug("progress metrics not logged: %s", exc)
        self._last, self._last_done, self._last_bytes = time.monotonic(), self.done, self.bytes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            elif self.mode == "log":
                self._report(final=True)
        if self.tracker is not None and self.mode != "off":
            elapsed = max(time.monotonic() - self.started, 1e-9)
            metrics = {f"{self._metric}.seconds": elapsed}
            if self.done:
                metrics[f"{self._metric}.{_metric_name(self.unit)}_per_s"] = self.done / elapsed
            if self.bytes:
                metrics[f"{self._metric}.{self._bytes_key}_per_s"] = self.bytes / elapsed
            try:
                self.tracker.log_metrics(metrics)
            except Exception as exc:
                self.log.debug("progress metrics not logged: %s", exc)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # no "done" line for work that failed
            self._closed = True
            self._stop.set()
            if self._bar is not None:
                self._bar.close()
            return
        self.close()

    def iterate(self, items, nbytes=None):
        """Yield ``items``, counting each (and ``nbytes(item)`` bytes); closes at the end."""
        for item in items:
            yield item
            self.update(1, nbytes(item) if nbytes else 0)
        self.close()


def read_jsonl(path, progress: Progress):
    """The records of a JSONL file (``.gz`` too), counting documents and their bytes into ``progress``."""

    try:
        with open_text(Path(path), "r") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    record = parse_json_line(line, path, number)  # a UserError naming file and line
                    progress.update(1, len(line.encode("utf-8")))
                    yield record
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc) from None
