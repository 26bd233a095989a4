"""Verified, resumable download of PixMo images (PixMo datasets ship images as URLs only).

Usage::

    from molmo_jax.data.download import ImageRequest, download_images

    reqs = [ImageRequest(row["image_url"], row.get("image_sha256")) for row in rows]
    summary = download_images(reqs, "pixmo_images", "pixmo_images/manifests/pixmo-points.jsonl")
    path = cached_image_path("pixmo_images", url)  # where an ok image lies

**Cache layout.** The cache is keyed by URL, as in the original (spec 11.2): the file for ``url`` is
``cache_dir / sha256(url.encode("utf-8")).hexdigest()``, with no extension. Keying by URL lets every
reader find an image from its dataset row alone (no manifest, no network) and keeps the cache
interchangeable with the original's ``$PIXMO_IMAGE_DIR``. The sha256 of the *content* is recorded
in the manifest, so content can still be verified or de-duplicated later. Files are written to
``cache_dir/.tmp/`` and moved into place with ``os.replace``, so no partial file is ever visible
under its final name; stale temporary files (older than an hour) are removed at start.

**Manifest.** One JSON line per URL outcome, appended (and flushed) as results arrive, so an
interrupted run loses nothing: ``url, status, sha256, bytes, seconds, attempts, path, error,
expected_sha256, time``. The last line for a URL wins. ``status`` is ``ok`` or one of the failures in
``PERMANENT_FAILURES`` / ``TRANSIENT_FAILURES`` (``http_<code>`` for any other HTTP status).
``seconds`` is the wall time from the first attempt to the outcome, backoff included; ``attempts``
counts network attempts (0 when the image was found valid in the cache).

**Resume.** A re-run skips URLs whose last record is ``ok`` while the cache file still has the
recorded size, and URLs that failed permanently (404, hash mismatch, not an image, ...) unless
``retry_failed=True``. Transient failures (timeouts, connection errors, 5xx, 429) are tried again.
A cache file without a manifest record (e.g. from the original's cache) is verified and reused.

**Verification.** Where the dataset gives an ``image_sha256`` the content must hash to it;
otherwise the bytes must be an image PIL can open, verify and fully decode (JPEG at 1/8 scale),
with a non-zero size; decoding catches truncated JPEG and PNG files (this relies on PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` being False, its default).

**Network.** A thread pool (``workers``) with at most ``per_host`` requests in flight per host,
handed out round-robin over hosts. Each attempt has a connect timeout, a read timeout per socket
read, and an overall deadline so a server trickling bytes cannot hold a worker. 429, 408, 5xx,
timeouts and connection errors are retried ``retries`` times with exponential backoff
(``backoff_s * 2**k``) or the server's ``Retry-After``, capped at ``max_retry_after_s``; a worker
never sleeps, waiting retries are rescheduled. Redirects (at most 5, http/https only) are followed
within an attempt; the per-host limit applies to the URL's own host. Connections are direct
(proxy environment variables are not used) and TLS certificates are verified. One process per
manifest: the manifest is locked while a run writes it.

**Local files.** ``file://`` URLs (``file:///abs/path.jpg``, host empty or ``localhost``) go through the
same validation, sha256 check, cache copy and manifest as downloads (the synthetic data set references
its images this way). A missing file is ``not_found`` and an unreadable one ``file_error`` (both
permanent); other I/O errors are ``io_error`` (transient, retried). Local files are not subject to the
per-host limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import itertools
import json
import os
import random
import socket
import ssl
import sys
import time
import uuid
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import client as http_client
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit
from urllib.request import url2pathname

from PIL import Image, ImageFile
from tqdm.auto import tqdm

try:  # POSIX only; elsewhere the manifest is simply not locked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "OK",
    "PERMANENT_FAILURES",
    "TRANSIENT_FAILURES",
    "DownloadSummary",
    "ImageRequest",
    "cached_image_path",
    "download_images",
    "is_permanent_failure",
    "read_manifest",
]

OK = "ok"
# Failures a re-run does not retry unless asked (`retry_failed=True`); so are all http_4xx but these.
PERMANENT_FAILURES = frozenset(
    {
        "hash_mismatch",
        "not_an_image",
        "too_large",
        "invalid_url",
        "invalid_sha256",
        "too_many_redirects",
        "ssl_error",
        "not_found",
        "file_error",
    }
)
TRANSIENT_FAILURES = frozenset({"timeout", "connection_error", "dns_error", "io_error", "error"})
_RETRYABLE_HTTP = frozenset({408, 425, 429})
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CHUNK_BYTES = 1 << 16
_STALE_TMP_S = 3600.0
_TMP_DIR_NAME = ".tmp"
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"  # keep reserved characters and existing escapes
DEFAULT_USER_AGENT = "molmo-jax-pixmo-downloader/0.1 (+https://github.com/allenai/molmo)"
_LOCAL_HOST = "file://"  # scheduler key of file:// URLs: no per-host limit


@dataclass(frozen=True)
class ImageRequest:
    """One image to fetch: its URL and, where the dataset gives one, the expected content sha256."""

    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class DownloadSummary:
    """Coverage of one `download_images` call over its unique URLs (reused and fetched alike)."""

    total: int
    counts: dict[str, int]  # status -> number of URLs
    bytes_ok: int  # size of all ok images
    fetched: int  # URLs that were worked on in this run (network or cache check)
    reused: int  # URLs settled by the manifest without any work
    bytes_downloaded: int  # bytes received in this run (ok images)
    seconds: float
    manifest_path: Path

    @property
    def ok(self) -> int:
        return self.counts.get(OK, 0)

    @property
    def percent_ok(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0

    def format(self) -> str:
        lines = [
            f"{self.total} images: {self.ok} ok ({self.percent_ok:.1f}%), {_human_bytes(self.bytes_ok)}; "
            f"{self.fetched} fetched ({_human_bytes(self.bytes_downloaded)}), {self.reused} reused, "
            f"{self.seconds:.1f} s"
        ]
        for status, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {status:<20} {n:>9}  {100.0 * n / self.total:5.1f}%")
        lines.append(f"  manifest: {self.manifest_path}")
        return "\n".join(lines)


def cached_image_path(cache_dir: str | os.PathLike, url: str) -> Path:
    """The cache file for `url`: ``cache_dir / sha256(url utf-8).hexdigest()`` (as the original)."""
    return Path(cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()


def is_permanent_failure(status: str) -> bool:
    """True for failures a re-run skips unless `retry_failed` (404 and other 4xx, bad content, ...)."""
    if status in PERMANENT_FAILURES:
        return True
    if status.startswith("http_") and status[5:].isdigit():
        code = int(status[5:])
        return 400 <= code < 500 and code not in _RETRYABLE_HTTP
    return False


def read_manifest(manifest_path: str | os.PathLike) -> dict[str, dict]:
    """The last record per URL of a manifest (empty if it does not exist); bad lines are skipped."""
    path = Path(manifest_path)
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    bad = 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. a line cut short by a killed run
                continue
            if _is_record(rec):
                records[rec["url"]] = rec
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} unreadable manifest line(s)", stacklevel=2)
    return records


def _is_record(rec: object) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("url"), str) and isinstance(rec.get("status"), str)


def download_images(
    requests: Iterable[ImageRequest | str],
    cache_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    *,
    workers: int = 16,
    per_host: int = 4,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 10.0,
    deadline_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    max_retry_after_s: float = 60.0,
    max_bytes: int = 64 * 2**20,
    retry_failed: bool = False,
    progress: bool = True,
    user_agent: str = DEFAULT_USER_AGENT,
) -> DownloadSummary:
    """Fetch, verify and cache every requested image; append outcomes to `manifest_path`.

    `requests` are `ImageRequest`s or plain URL strings; duplicate URLs are fetched once. Never raises
    for a bad URL, hash or server (the outcome goes to the manifest); raises ValueError,
    NotADirectoryError or TypeError naming the path, argument or request for bad arguments. With
    `progress` a tqdm bar is shown and the summary printed (stderr) at the end. See the module
    docstring for the cache, manifest and retry rules.
    """
    opts = _Options(
        workers=_positive_int("workers", workers),
        per_host=_positive_int("per_host", per_host),
        connect_timeout_s=_positive_float("connect_timeout_s", connect_timeout_s),
        read_timeout_s=_positive_float("read_timeout_s", read_timeout_s),
        deadline_s=_positive_float("deadline_s", deadline_s),
        retries=_non_negative_int("retries", retries),
        backoff_s=_non_negative_float("backoff_s", backoff_s),
        max_retry_after_s=_non_negative_float("max_retry_after_s", max_retry_after_s),
        max_bytes=_positive_int("max_bytes", max_bytes),
        user_agent=user_agent,
    )
    start = time.monotonic()
    cache = _prepare_cache_dir(Path(cache_dir))
    manifest = _prepare_manifest_path(Path(manifest_path))
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images will pass the check", stacklevel=2
        )

    unique = _dedupe(requests)
    tally = _Tally()
    with _ManifestWriter(manifest) as writer:  # locked before it is read
        tasks = _plan(unique, read_manifest(manifest), cache, retry_failed, tally)
        with tqdm(
            total=len(unique),
            initial=tally.reused,
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
            desc="download",
        ) as bar:
            bar.set_postfix(tally.postfix(), refresh=False)

            def on_result(task: _Task, outcome: _Outcome) -> None:
                record = _make_record(task, outcome)
                writer.write(record)
                tally.add(record["status"], record["bytes"] or 0, reused=False)
                bar.set_postfix(tally.postfix(), refresh=False)
                bar.update(1)

            _run_tasks(tasks, cache, opts, on_result)

    summary = tally.summary(time.monotonic() - start, manifest)
    if progress:
        print(summary.format(), file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------------------------
# Arguments, cache folder, manifest


@dataclass(frozen=True)
class _Options:
    workers: int
    per_host: int
    connect_timeout_s: float
    read_timeout_s: float
    deadline_s: float
    retries: int
    backoff_s: float
    max_retry_after_s: float
    max_bytes: int
    user_agent: str


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _positive_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _non_negative_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _prepare_cache_dir(cache_dir: Path) -> Path:
    if cache_dir.exists() and not cache_dir.is_dir():
        raise NotADirectoryError(f"cache_dir is not a directory: {cache_dir}")
    try:
        (cache_dir / _TMP_DIR_NAME).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NotADirectoryError(f"cannot create cache_dir {cache_dir}: {e}") from e
    _remove_stale_tmp_files(cache_dir / _TMP_DIR_NAME)
    return cache_dir.resolve()


def _remove_stale_tmp_files(tmp_dir: Path) -> None:
    """Drop temporary files left by killed runs (old ones only: another process may share the cache)."""
    cutoff = time.time() - _STALE_TMP_S
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


def _prepare_manifest_path(manifest_path: Path) -> Path:
    if manifest_path.is_dir():
        raise ValueError(f"manifest_path is a directory, expected a .jsonl file: {manifest_path}")
    if manifest_path.parent.exists() and not manifest_path.parent.is_dir():
        raise NotADirectoryError(f"manifest_path's parent is not a directory: {manifest_path.parent}")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    return manifest_path.resolve()


class _ManifestWriter:
    """Appends one JSON line per outcome, flushed at once; holds an exclusive lock on the file."""

    def __init__(self, path: Path):
        self._path = path
        self._file: io.TextIOWrapper | None = None

    def __enter__(self) -> _ManifestWriter:
        needs_newline = self._path.exists() and _last_byte(self._path) not in (b"", b"\n")
        self._file = self._path.open("a", encoding="utf-8", newline="\n")
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                self._file.close()
                raise RuntimeError(f"another process is writing the manifest {self._path}") from e
        if needs_newline:  # the last line was cut short; keep the next record on a line of its own
            self._file.write("\n")
        return self

    def write(self, record: dict) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def __exit__(self, *exc) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):
            os.fsync(self._file.fileno())
        self._file.close()  # closing releases the lock


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return b""
        f.seek(-1, os.SEEK_END)
        return f.read(1)


# ----------------------------------------------------------------------------------------------
# Planning and bookkeeping


@dataclass
class _Task:
    request: ImageRequest
    cache_path: Path
    attempts: int = 0  # network attempts so far
    first_start: float | None = None
    host: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.request.url.strip())
            self.host = _LOCAL_HOST if parts.scheme == "file" else (parts.hostname or "").lower()
        except ValueError:
            self.host = ""


@dataclass(frozen=True)
class _Outcome:
    status: str
    sha256: str | None = None
    nbytes: int | None = None
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    from_cache: bool = False


def _dedupe(requests: Iterable[ImageRequest | str]) -> list[ImageRequest]:
    """Unique requests by URL (first one wins), with hashes lower-cased."""
    seen: dict[str, ImageRequest] = {}
    for i, req in enumerate(requests):
        if isinstance(req, str):
            req = ImageRequest(req)
        if not isinstance(req, ImageRequest) or not isinstance(req.url, str):
            raise TypeError(f"request {i} is not an ImageRequest or a URL string: {req!r}")
        sha = _normalize_sha256(req.sha256)
        prior = seen.get(req.url)
        if prior is None:
            seen[req.url] = ImageRequest(req.url, sha)
        elif sha is not None and prior.sha256 is not None and sha != prior.sha256:
            warnings.warn(f"request {i}: {req.url} given with two sha256s; keeping the first", stacklevel=3)
    return list(seen.values())


def _plan(
    unique: list[ImageRequest], previous: dict[str, dict], cache_dir: Path, retry_failed: bool, tally: _Tally
) -> list[_Task]:
    """Tasks for the requests an earlier run did not settle; settled ones go straight to the tally."""
    tasks = []
    for req in unique:
        rec = previous.get(req.url)
        if rec is not None and _is_settled(rec, req, cache_dir, retry_failed):
            tally.add(rec["status"], rec.get("bytes") or 0, reused=True)
        else:
            tasks.append(_Task(req, cache_path=cached_image_path(cache_dir, req.url)))
    return tasks


def _normalize_sha256(value: object) -> str | None:
    """Lower-case hex; None for a missing hash (None, "", or a NaN from a data frame)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip().lower()
    return text or None


def _is_settled(rec: dict, req: ImageRequest, cache_dir: Path, retry_failed: bool) -> bool:
    """Whether a manifest record from an earlier run settles this request without any work."""
    status = rec["status"]
    if status == OK:
        if req.sha256 is not None and rec.get("sha256") != req.sha256:
            return False
        try:
            return cached_image_path(cache_dir, req.url).stat().st_size == rec.get("bytes")
        except OSError:
            return False
    return is_permanent_failure(status) and not retry_failed


def _make_record(task: _Task, outcome: _Outcome) -> dict:
    now = time.monotonic()
    return {
        "url": task.request.url,
        "status": outcome.status,
        "sha256": outcome.sha256,
        "bytes": outcome.nbytes,
        "seconds": round(now - (task.first_start or now), 3),
        "attempts": 0 if outcome.from_cache else task.attempts,
        "path": str(task.cache_path) if outcome.status == OK else None,
        "error": outcome.error,
        "expected_sha256": task.request.sha256,
        "time": round(time.time(), 3),
    }


class _Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.bytes_ok = 0
        self.bytes_downloaded = 0
        self.reused = 0
        self.fetched = 0

    def add(self, status: str, nbytes: int, *, reused: bool) -> None:
        self.counts[status] += 1
        if reused:
            self.reused += 1
        else:
            self.fetched += 1
        if status == OK:
            self.bytes_ok += nbytes
            if not reused:
                self.bytes_downloaded += nbytes

    def postfix(self) -> dict[str, int]:
        ok = self.counts[OK]
        return {"ok": ok, "failed": sum(self.counts.values()) - ok}

    def summary(self, seconds: float, manifest: Path) -> DownloadSummary:
        return DownloadSummary(
            total=sum(self.counts.values()),
            counts=dict(self.counts),
            bytes_ok=self.bytes_ok,
            fetched=self.fetched,
            reused=self.reused,
            bytes_downloaded=self.bytes_downloaded,
            seconds=seconds,
            manifest_path=manifest,
        )


# ----------------------------------------------------------------------------------------------
# Scheduling: a thread pool, per-host limits, retries rescheduled rather than slept on


class _HostScheduler:
    """Hands out tasks round-robin over hosts with at most `per_host` in flight per host."""

    def __init__(self, per_host: int):
        self._per_host = per_host
        self._queues: dict[str, deque[_Task]] = defaultdict(deque)
        self._in_flight: Counter[str] = Counter()
        self._ready: deque[str] = deque()  # hosts with queued tasks and a free slot
        self._in_ready: set[str] = set()
        self._delayed: list[tuple[float, int, _Task]] = []  # (due time, tie-break, task)
        self._seq = itertools.count()

    def add(self, task: _Task) -> None:
        self._queues[task.host].append(task)
        self._mark_ready(task.host)

    def add_later(self, task: _Task, delay_s: float) -> None:
        heapq.heappush(self._delayed, (time.monotonic() + delay_s, next(self._seq), task))

    def release(self, host: str) -> None:
        self._in_flight[host] -= 1
        self._mark_ready(host)

    def next_task(self) -> _Task | None:
        self._promote_due()
        while self._ready:
            host = self._ready.popleft()
            self._in_ready.discard(host)
            queue = self._queues.get(host)
            if not queue or self._full(host):
                continue
            task = queue.popleft()
            if not queue:
                del self._queues[host]
            self._in_flight[host] += 1
            self._mark_ready(host)  # back of the line: round-robin over hosts
            return task
        return None

    def seconds_until_due(self) -> float | None:
        """Time until the next delayed retry is due; None when none waits."""
        return max(0.0, self._delayed[0][0] - time.monotonic()) if self._delayed else None

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self.add(heapq.heappop(self._delayed)[2])

    def _full(self, host: str) -> bool:
        return host != _LOCAL_HOST and self._in_flight[host] >= self._per_host

    def _mark_ready(self, host: str) -> None:
        if host not in self._in_ready and self._queues.get(host) and not self._full(host):
            self._ready.append(host)
            self._in_ready.add(host)


def _run_tasks(
    tasks: list[_Task], cache_dir: Path, opts: _Options, on_result: Callable[[_Task, _Outcome], None]
) -> None:
    """Run every task to a final outcome, calling `on_result(task, outcome)` on this thread."""
    scheduler = _HostScheduler(opts.per_host)
    for task in tasks:
        scheduler.add(task)
    running: dict[Future, _Task] = {}
    pool = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="pixmo-download")
    try:
        while True:
            while len(running) < opts.workers and (task := scheduler.next_task()) is not None:
                if task.first_start is None:
                    task.first_start = time.monotonic()
                task.attempts += 1
                running[pool.submit(_attempt, task, cache_dir, opts)] = task
            wait_s = scheduler.seconds_until_due()
            if not running:
                if wait_s is None:
                    return
                time.sleep(wait_s)
                continue
            done, _ = wait(running, timeout=wait_s, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                scheduler.release(task.host)
                outcome = _result_of(fut)
                if outcome.retryable and task.attempts <= opts.retries:
                    scheduler.add_later(task, _retry_delay(task.attempts, outcome.retry_after_s, opts))
                else:
                    on_result(task, outcome)
    except BaseException:  # e.g. Ctrl-C: return at once; running attempts end within their deadline
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _result_of(fut: Future) -> _Outcome:
    try:
        return fut.result()
    except Exception as e:  # _attempt catches everything; this is a last line of defence
        return _Outcome("error", error=_describe(e))


def _retry_delay(attempts: int, retry_after_s: float | None, opts: _Options) -> float:
    if retry_after_s is not None:
        return min(retry_after_s, opts.max_retry_after_s)
    delay = opts.backoff_s * 2 ** (attempts - 1)
    return min(delay * random.uniform(1.0, 1.25), opts.max_retry_after_s)  # jitter spreads retries


# ----------------------------------------------------------------------------------------------
# One attempt: cache check, HTTP GET, verification, atomic write (runs on a worker thread)


class _FetchError(Exception):
    def __init__(
        self, status: str, message: str, *, retryable: bool = False, retry_after_s: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def _attempt(task: _Task, cache_dir: Path, opts: _Options) -> _Outcome:
    """One try at a task; never raises (every failure becomes an `_Outcome`)."""
    expected = task.request.sha256
    if expected is not None and not _is_sha256_hex(expected):
        return _Outcome("invalid_sha256", error=f"expected sha256 is not 64 hex digits: {expected!r}")
    try:
        if task.attempts == 1 and task.cache_path.is_file():
            cached = _verify_cached(task)
            if cached is not None:
                return cached
        if task.host == _LOCAL_HOST:
            body = _file_get(task.request.url, opts)
        else:
            body = _http_get(task.request.url, opts)
        digest = hashlib.sha256(body).hexdigest()
        failure = _verify(body, digest, task.request.sha256)
        if failure is not None:
            return _Outcome(failure.status, digest, len(body), str(failure))
        _write_atomic(task.cache_path, cache_dir / _TMP_DIR_NAME, body)
        return _Outcome(OK, digest, len(body))
    except _FetchError as e:
        return _Outcome(e.status, error=str(e), retryable=e.retryable, retry_after_s=e.retry_after_s)
    except Exception as e:
        return _Outcome("error", error=_describe(e))


def _verify_cached(task: _Task) -> _Outcome | None:
    """An ok outcome if the cache file already holds a valid image for this request."""
    body = task.cache_path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    if _verify(body, digest, task.request.sha256) is not None:
        return None  # e.g. an error text the original wrote into its cache: fetch again
    return _Outcome(OK, digest, len(body), from_cache=True)


def _verify(body: bytes, digest: str, expected_sha256: str | None) -> _FetchError | None:
    if expected_sha256 is not None:
        if digest != expected_sha256:
            return _FetchError("hash_mismatch", f"expected sha256 {expected_sha256}, got {digest}")
        return None
    problem = _image_problem(body)
    if problem is None:
        return None
    return _FetchError("too_large" if problem.startswith("decompression bomb") else "not_an_image", problem)


def _image_problem(body: bytes) -> str | None:
    """None if `body` is a complete image PIL can decode, else what is wrong with it."""
    if not body:
        return "empty body"
    try:
        with Image.open(io.BytesIO(body)) as img:
            img.verify()  # structure and checksums (e.g. PNG CRCs)
        with Image.open(io.BytesIO(body)) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft("RGB", (1, 1))  # decode at 1/8 scale: still reads every byte
            img.load()  # raises on truncated data
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    if width <= 0 or height <= 0:
        return f"image has size {width}x{height}"
    return None


def _write_atomic(path: Path, tmp_dir: Path, data: bytes) -> None:
    """Write via a uniquely named temporary file and os.replace: never a partial file under `path`."""
    tmp = tmp_dir / f"{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_SSL_CONTEXT = ssl.create_default_context()


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int | None
    path: str  # request target: path and query, percent-encoded


def _parse_target(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as e:
        raise _FetchError("invalid_url", f"cannot parse URL: {e}") from e
    if parts.scheme not in ("http", "https") or not host:
        raise _FetchError("invalid_url", f"not an http(s) URL with a host: {url!r}")
    path = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_URL_SAFE)
    return _Target(parts.scheme, host, port, path)


def _file_get(url: str, opts: _Options) -> bytes:
    """The bytes of the local file named by a ``file://`` URL (at most ``opts.max_bytes``)."""
    parts = urlsplit(url.strip())
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise _FetchError("invalid_url", f"not a local file:// URL (host {parts.netloc!r}): {url!r}")
    path = Path(url2pathname(parts.path))
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > opts.max_bytes:
                raise _FetchError("too_large", f"file has {size} bytes > max_bytes {opts.max_bytes}")
            body = f.read(opts.max_bytes + 1)
    except FileNotFoundError as e:
        raise _FetchError("not_found", f"no such file: {path}") from e
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise _FetchError("file_error", _describe(e)) from e
    except OSError as e:
        raise _FetchError("io_error", _describe(e), retryable=True) from e
    if len(body) > opts.max_bytes:
        raise _FetchError("too_large", f"file exceeds max_bytes {opts.max_bytes}")
    return body


def _http_get(url: str, opts: _Options) -> bytes:
    """The body of a 2xx response to GET `url`, following redirects, within `opts.deadline_s`."""
    deadline = time.monotonic() + opts.deadline_s
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        target = _parse_target(current)
        try:
            location = _get_once(target, opts, deadline)
        except _FetchError:
            raise
        except Exception as e:
            raise _classify_network_error(e) from e
        if isinstance(location, bytes):
            return location
        current = urljoin(current, location)
    raise _FetchError("too_many_redirects", f"more than {_MAX_REDIRECTS} redirects (last: {current})")


def _get_once(target: _Target, opts: _Options, deadline: float) -> bytes | str:
    """One request: the body, or the Location of a redirect."""
    conn_cls = http_client.HTTPSConnection if target.scheme == "https" else http_client.HTTPConnection
    kwargs = {"context": _SSL_CONTEXT} if target.scheme == "https" else {}
    conn = conn_cls(
        target.host, target.port, timeout=_socket_timeout(opts.connect_timeout_s, deadline), **kwargs
    )
    response = None
    try:
        conn.connect()
        sock = conn.sock  # kept: http.client drops conn.sock once a 'Connection: close' reply arrives
        sock.settimeout(_socket_timeout(opts.read_timeout_s, deadline))
        conn.request(
            "GET",
            target.path,
            headers={
                "User-Agent": opts.user_agent,
                "Accept": "image/*,*/*;q=0.8",
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        status = response.status
        location = response.getheader("Location")
        if status in _REDIRECT_CODES and location:
            return location
        if not 200 <= status < 300:
            retryable = status >= 500 or status in _RETRYABLE_HTTP
            raise _FetchError(
                f"http_{status}",
                f"HTTP {status} {response.reason}",
                retryable=retryable,
                retry_after_s=_parse_retry_after(response.getheader("Retry-After")),
            )
        return _read_body(response, sock, opts, deadline)
    finally:
        if response is not None:
            response.close()
        conn.close()


def _read_body(
    response: http_client.HTTPResponse, sock: socket.socket, opts: _Options, deadline: float
) -> bytes:
    declared = _parse_int(response.getheader("Content-Length"))
    if declared is not None and declared > opts.max_bytes:
        raise _FetchError("too_large", f"Content-Length {declared} > max_bytes {opts.max_bytes}")
    body = bytearray()
    while True:
        sock.settimeout(_socket_timeout(opts.read_timeout_s, deadline))
        chunk = response.read1(_CHUNK_BYTES)  # one socket read at most, so the deadline holds
        if not chunk:
            break
        body += chunk
        if len(body) > opts.max_bytes:
            raise _FetchError("too_large", f"body exceeds max_bytes {opts.max_bytes}")
    if declared is not None and len(body) < declared:
        raise _FetchError(
            "connection_error", f"body cut short: {len(body)} of {declared} bytes", retryable=True
        )
    return bytes(body)


def _socket_timeout(timeout_s: float, deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _FetchError("timeout", "request deadline exceeded", retryable=True)
    return min(timeout_s, remaining)


def _classify_network_error(e: BaseException) -> _FetchError:
    if isinstance(e, TimeoutError):  # socket.timeout
        return _FetchError("timeout", f"timed out: {_describe(e)}", retryable=True)
    if isinstance(e, ssl.SSLCertVerificationError):
        return _FetchError("ssl_error", _describe(e))
    if isinstance(e, socket.gaierror):
        return _FetchError("dns_error", _describe(e), retryable=True)
    if isinstance(e, http_client.InvalidURL | UnicodeError):
        return _FetchError("invalid_url", _describe(e))
    if isinstance(e, OSError | http_client.HTTPException):
        return _FetchError("connection_error", _describe(e), retryable=True)
    return _FetchError("error", _describe(e))


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _parse_int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 300 else text[:297] + "..."


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover
