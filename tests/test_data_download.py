"""molmo_jax.data.download against a local HTTP server on 127.0.0.1 (no other traffic)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from molmo_jax.data.download import (
    OK,
    DownloadSummary,
    ImageRequest,
    cached_image_path,
    download_images,
    is_permanent_failure,
    read_manifest,
)

# Tiny timeouts keep the suite fast: slow/trickling routes outlast them by a wide margin.
FAST = dict(
    workers=8,
    per_host=4,
    connect_timeout_s=0.5,
    read_timeout_s=0.3,
    deadline_s=0.8,
    retries=1,
    backoff_s=0.01,
    max_retry_after_s=0.5,
    max_bytes=50_000,
    progress=False,
)


def _image_bytes(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


JPEG = _image_bytes("JPEG", 41, 29, seed=0)
PNG = _image_bytes("PNG", 37, 23, seed=1)
BIG_PNG = _image_bytes("PNG", 160, 160, seed=2)  # ~77 kB > max_bytes
assert len(JPEG) < 50_000 and len(PNG) < 50_000 < len(BIG_PNG)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server:
    """A threaded HTTP server whose routes are functions of (handler, times this path was requested)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler, int], None]] = {}
        self.counts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with server._lock:
                    server.counts[self.path] += 1
                    server.times.setdefault(self.path, []).append(time.monotonic())
                    nth = server.counts[self.path]
                try:
                    route = server.routes.get(self.path)
                    if route is None:
                        _send(self, 404, b"no such route")
                    else:
                        route(self, nth)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeouts): expected

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.stop.set()  # releases handlers that sleep
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _send(
    h: BaseHTTPRequestHandler, code: int, body: bytes = b"", headers: dict | None = None, length: bool = True
) -> None:
    h.send_response(code)
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    if length:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _ok(body: bytes, **kw) -> Callable[[BaseHTTPRequestHandler, int], None]:
    return lambda h, nth: _send(h, 200, body, {"Content-Type": "image/octet-stream"}, **kw)


def _status(code: int, headers: dict | None = None) -> Callable[[BaseHTTPRequestHandler, int], None]:
    return lambda h, nth: _send(h, code, b"error page", headers)


def _fail_first(code: int, body: bytes, headers: dict | None = None):
    return lambda h, nth: _send(h, code, b"busy", headers) if nth == 1 else _send(h, 200, body)


@pytest.fixture
def server():
    srv = _Server()
    routes = srv.routes
    routes["/good.jpg"] = _ok(JPEG)
    routes["/good.png"] = _ok(PNG)
    routes["/hashed.png"] = _ok(PNG)
    routes["/wrong-hash.jpg"] = _ok(JPEG)
    routes["/missing.jpg"] = _status(404)
    routes["/text.html"] = _ok(b"<html>not an image, whatever the Content-Type says</html>")
    routes["/truncated.jpg"] = _ok(JPEG[: len(JPEG) // 2])
    routes["/truncated.png"] = _ok(PNG[: len(PNG) * 3 // 4])
    routes["/slow.jpg"] = lambda h, nth: srv.stop.wait(3.0) or _send(h, 200, JPEG)
    routes["/trickle.jpg"] = lambda h, nth: _trickle(h, srv.stop)
    routes["/cut-short.jpg"] = lambda h, nth: _cut_short(h)
    routes["/flaky-429.jpg"] = _fail_first(429, JPEG, {"Retry-After": "0"})
    routes["/flaky-503.png"] = _fail_first(503, PNG)
    routes["/always-503.jpg"] = _status(503)
    routes["/redirect"] = _status(302, {"Location": "/good.png"})
    routes["/redirect-loop"] = _status(302, {"Location": "/redirect-loop"})
    routes["/big.png"] = _ok(BIG_PNG)
    routes["/big-unsized.png"] = _ok(BIG_PNG, length=False)  # HTTP/1.0: body ends at close
    yield srv
    srv.close()


def _trickle(h: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """Declares the whole JPEG, then sends a byte every 0.1 s: each read beats the read timeout."""
    h.send_response(200)
    h.send_header("Content-Length", str(len(JPEG)))
    h.end_headers()
    for i in range(len(JPEG)):
        if stop.wait(0.1):
            return
        h.wfile.write(JPEG[i : i + 1])
        h.wfile.flush()


def _cut_short(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(JPEG)))
    h.end_headers()
    h.wfile.write(JPEG[: len(JPEG) // 2])  # then the connection closes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, reqs, **kw) -> DownloadSummary:
    return download_images(reqs, tmp_path / "cache", tmp_path / "manifest.jsonl", **{**FAST, **kw})


def _manifest_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]


def _assert_no_tmp_files(cache: Path) -> None:
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".tmp" or p.parent.name == ".tmp"]


def test_statuses_cache_and_manifest(server, tmp_path):
    url = server.url
    refused = f"http://127.0.0.1:{_closed_port()}/x.jpg"
    reqs = [
        ImageRequest(url("/good.jpg")),
        url("/good.png"),  # a plain string works too
        ImageRequest(url("/hashed.png"), _sha(PNG).upper()),  # case does not matter
        ImageRequest(url("/wrong-hash.jpg"), _sha(b"other bytes")),
        ImageRequest(url("/missing.jpg")),
        ImageRequest(url("/text.html")),
        ImageRequest(url("/truncated.jpg")),
        ImageRequest(url("/truncated.png")),
        ImageRequest(url("/slow.jpg")),
        ImageRequest(url("/trickle.jpg")),
        ImageRequest(url("/cut-short.jpg")),
        ImageRequest(url("/flaky-429.jpg")),
        ImageRequest(url("/flaky-503.png")),
        ImageRequest(url("/always-503.jpg")),
        ImageRequest(url("/redirect")),
        ImageRequest(url("/redirect-loop")),
        ImageRequest(url("/big.png")),
        ImageRequest(url("/big-unsized.png")),
        ImageRequest(url("/good.jpg")),  # duplicate: fetched once
        ImageRequest(refused),
        ImageRequest("ftp://127.0.0.1/x.jpg"),
        ImageRequest("not a url"),
        ImageRequest(url("/good.jpg?bad-hash"), "1234"),
    ]
    t0 = time.monotonic()
    summary = _run(tmp_path, reqs)
    elapsed = time.monotonic() - t0
    assert elapsed < 8, elapsed  # nothing stalls: the trickle route alone would take minutes

    records = read_manifest(tmp_path / "manifest.jsonl")
    status = {u.replace(server.base, ""): r["status"] for u, r in records.items()}
    assert status == {
        "/good.jpg": OK,
        "/good.png": OK,
        "/hashed.png": OK,
        "/flaky-429.jpg": OK,
        "/flaky-503.png": OK,
        "/redirect": OK,
        "/wrong-hash.jpg": "hash_mismatch",
        "/missing.jpg": "http_404",
        "/text.html": "not_an_image",
        "/truncated.jpg": "not_an_image",
        "/truncated.png": "not_an_image",
        "/slow.jpg": "timeout",
        "/trickle.jpg": "timeout",
        "/cut-short.jpg": "connection_error",
        "/always-503.jpg": "http_503",
        "/redirect-loop": "too_many_redirects",
        "/big.png": "too_large",
        "/big-unsized.png": "too_large",
        refused: "connection_error",
        "ftp://127.0.0.1/x.jpg": "invalid_url",
        "not a url": "invalid_url",
        "/good.jpg?bad-hash": "invalid_sha256",
    }
    assert len(_manifest_lines(tmp_path)) == len(records)  # one line per unique URL

    # Transient failures were retried (retries=1 -> 2 attempts); permanent ones were not.
    r = {u.replace(server.base, ""): rec for u, rec in records.items()}
    assert r["/flaky-429.jpg"]["attempts"] == 2 and r["/flaky-503.png"]["attempts"] == 2
    assert r["/always-503.jpg"]["attempts"] == 2 and server.counts["/always-503.jpg"] == 2
    assert r["/slow.jpg"]["attempts"] == 2 and r["/trickle.jpg"]["attempts"] == 2
    assert r["/trickle.jpg"]["seconds"] < 2.5  # the 0.8 s deadline cut each attempt short
    assert r["/missing.jpg"]["attempts"] == 1 and server.counts["/missing.jpg"] == 1
    assert server.counts["/good.jpg"] == 1
    assert server.counts["/good.jpg?bad-hash"] == 0

    # Content hashes and sizes are recorded; the cache holds exactly the ok images, keyed by URL.
    assert r["/good.jpg"]["sha256"] == _sha(JPEG) and r["/good.jpg"]["bytes"] == len(JPEG)
    assert r["/hashed.png"]["expected_sha256"] == _sha(PNG)
    assert r["/wrong-hash.jpg"]["sha256"] == _sha(JPEG)
    cache = tmp_path / "cache"
    ok_urls = {u for u, rec in records.items() if rec["status"] == OK}
    assert {p.name for p in cache.iterdir() if p.is_file()} == {
        hashlib.sha256(u.encode()).hexdigest() for u in ok_urls
    }
    for u in ok_urls:
        path = cached_image_path(cache, u)
        assert records[u]["path"] == str(path.resolve())
        assert _sha(path.read_bytes()) == records[u]["sha256"]
    assert cached_image_path(cache, url("/redirect")).read_bytes() == PNG
    for u, rec in records.items():
        if rec["status"] != OK:
            assert rec["path"] is None and rec["error"]
            assert not cached_image_path(cache, u).exists()
    _assert_no_tmp_files(cache)

    assert summary.total == 22 and summary.ok == 6 and summary.counts["not_an_image"] == 3
    assert summary.percent_ok == pytest.approx(100 * 6 / 22)
    assert summary.bytes_ok == 2 * len(JPEG) + 4 * len(PNG) == summary.bytes_downloaded
    assert summary.fetched == 22 and summary.reused == 0
    assert "http_404" in summary.format() and "27.3%" in summary.format()


def test_resume_fetches_only_what_is_missing(server, tmp_path):
    finished = ["/good.jpg", "/good.png", "/missing.jpg", "/text.html", "/wrong-hash.jpg"]
    reqs = [ImageRequest(server.url(p), _sha(b"x") if p == "/wrong-hash.jpg" else None) for p in finished]
    reqs.append(ImageRequest(server.url("/always-503.jpg")))
    first = _run(tmp_path, reqs)
    assert first.ok == 2 and first.fetched == 6
    lines_before = len(_manifest_lines(tmp_path))

    server.counts.clear()
    server.routes["/always-503.jpg"] = _ok(JPEG)  # the transient failure recovers
    second = _run(tmp_path, [*reqs, ImageRequest(server.url("/flaky-503.png"))])
    assert all(server.counts[p] == 0 for p in finished), server.counts  # no request for finished URLs
    assert server.counts["/always-503.jpg"] == 1 and server.counts["/flaky-503.png"] == 2
    assert second.reused == 5 and second.fetched == 2 and second.ok == 4
    assert second.counts == {OK: 4, "http_404": 1, "not_an_image": 1, "hash_mismatch": 1}
    assert len(_manifest_lines(tmp_path)) == lines_before + 2  # only new outcomes are appended

    # An ok image whose cache file went missing is fetched again.
    server.counts.clear()
    cached_image_path(tmp_path / "cache", server.url("/good.png")).unlink()
    third = _run(tmp_path, reqs)
    assert server.counts == Counter({"/good.png": 1})
    assert third.ok == 3 and third.fetched == 1
    _assert_no_tmp_files(tmp_path / "cache")


def test_missing_hashes_mean_no_hash(server, tmp_path):
    # Data frames give NaN or "" where a row has no image_sha256: the image is checked with PIL instead.
    summary = _run(
        tmp_path,
        [
            ImageRequest(server.url("/good.jpg"), float("nan")),
            ImageRequest(server.url("/good.png"), ""),
            ImageRequest(server.url("/text.html"), None),
        ],
    )
    assert summary.counts == {OK: 2, "not_an_image": 1}


def test_retry_failed_refetches_permanent_failures(server, tmp_path):
    reqs = [ImageRequest(server.url("/missing.jpg"))]
    assert _run(tmp_path, reqs).counts == {"http_404": 1}
    server.routes["/missing.jpg"] = _ok(JPEG)  # the image appears

    assert _run(tmp_path, reqs).counts == {"http_404": 1}  # not retried by default
    assert server.counts["/missing.jpg"] == 1

    summary = _run(tmp_path, reqs, retry_failed=True)
    assert summary.counts == {OK: 1} and server.counts["/missing.jpg"] == 2
    assert cached_image_path(tmp_path / "cache", server.url("/missing.jpg")).read_bytes() == JPEG
    assert read_manifest(tmp_path / "manifest.jsonl")[server.url("/missing.jpg")]["status"] == OK


def test_retry_after_is_honoured_and_bounded(server, tmp_path):
    server.routes["/rate-limited.jpg"] = _fail_first(429, JPEG, {"Retry-After": "30"})
    t0 = time.monotonic()
    summary = _run(
        tmp_path, [server.url("/rate-limited.jpg")], retries=2, backoff_s=0.001, max_retry_after_s=0.4
    )
    assert summary.ok == 1 and time.monotonic() - t0 < 3
    first, second = server.times["/rate-limited.jpg"]
    assert 0.35 <= second - first < 2.0  # waited Retry-After (capped at 0.4 s), not the 1 ms backoff


def test_per_host_concurrency_limit(server, tmp_path):
    lock, active, peak = threading.Lock(), [0], [0]

    def sleepy(h, nth):
        # Counted strictly inside the time the client waits for its response (the client frees its
        # slot only after the response arrives), so `peak` never over-counts the client's concurrency.
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        server.stop.wait(0.15)
        with lock:
            active[0] -= 1
        _send(h, 200, PNG)

    paths = [f"/sleepy-{i}.png" for i in range(8)]
    for p in paths:
        server.routes[p] = sleepy
    summary = _run(tmp_path, [server.url(p) for p in paths], workers=8, per_host=2)
    assert summary.ok == 8
    assert peak[0] == 2  # 8 workers, but only 2 at a time on this host


def test_existing_cache_files_are_verified_not_refetched(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    good, hashed, junk = server.url("/good.jpg"), server.url("/hashed.png"), server.url("/good.png")
    cached_image_path(cache, good).write_bytes(JPEG)
    cached_image_path(cache, hashed).write_bytes(PNG)
    cached_image_path(cache, junk).write_bytes(b"ConnectionError: an error the original cached")
    summary = _run(tmp_path, [good, ImageRequest(hashed, _sha(PNG)), junk])
    assert summary.ok == 3
    assert server.counts == Counter({"/good.png": 1})  # only the junk file was fetched again
    records = read_manifest(tmp_path / "manifest.jsonl")
    assert records[good]["attempts"] == 0 and records[junk]["attempts"] == 1
    assert cached_image_path(cache, junk).read_bytes() == PNG


def test_manifest_with_a_cut_last_line_is_resumed(server, tmp_path):
    good, png = server.url("/good.jpg"), server.url("/good.png")
    _run(tmp_path, [good])
    manifest = tmp_path / "manifest.jsonl"
    with manifest.open("a") as f:
        f.write('{"url": "' + png + '", "sta')  # a run killed mid-line
    server.counts.clear()
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        summary = _run(tmp_path, [good, png])
    assert summary.ok == 2 and server.counts == Counter({"/good.png": 1})
    lines = manifest.read_text().splitlines()
    assert json.loads(lines[-1])["url"] == png and json.loads(lines[-1])["status"] == OK


def test_failed_write_leaves_nothing_behind(server, tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("molmo_jax.data.download.os.replace", failing_replace)
    summary = _run(tmp_path, [server.url("/good.jpg")])
    assert summary.counts == {"error": 1}
    assert "disk full" in read_manifest(tmp_path / "manifest.jsonl")[server.url("/good.jpg")]["error"]
    assert not cached_image_path(tmp_path / "cache", server.url("/good.jpg")).exists()
    _assert_no_tmp_files(tmp_path / "cache")


def test_progress_bar_and_printed_summary(server, tmp_path, capsys):
    _run(tmp_path, [server.url("/good.jpg"), server.url("/missing.jpg")], progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "1 ok (50.0%)" in err and "http_404" in err


def test_bad_arguments_name_the_problem(tmp_path):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(not_a_dir)):
        download_images([], not_a_dir, tmp_path / "m.jsonl", progress=False)
    with pytest.raises(ValueError, match=str(tmp_path)):
        download_images([], tmp_path / "cache", tmp_path, progress=False)
    with pytest.raises(ValueError, match="per_host"):
        download_images([], tmp_path / "cache", tmp_path / "m.jsonl", per_host=0, progress=False)
    with pytest.raises(TypeError, match="request 1"):
        download_images(["http://127.0.0.1/x", 3], tmp_path / "cache", tmp_path / "m.jsonl", progress=False)


def test_empty_request_list_and_helpers(tmp_path):
    summary = download_images([], tmp_path / "cache", tmp_path / "m.jsonl", progress=False)
    assert summary.total == 0 and summary.percent_ok == 0.0 and summary.counts == {}
    url = "https://example.com/ü image.jpg"
    assert cached_image_path(tmp_path, url) == tmp_path / hashlib.sha256(url.encode("utf-8")).hexdigest()
    assert is_permanent_failure("http_404") and is_permanent_failure("hash_mismatch")
    assert not any(map(is_permanent_failure, ["http_429", "http_503", "timeout", "connection_error", OK]))


def test_file_urls_are_validated_cached_and_recorded(tmp_path):
    src = tmp_path / "src dir"  # a space: the URL is percent-encoded
    src.mkdir()
    (src / "a.jpg").write_bytes(JPEG)
    (src / "b.png").write_bytes(PNG)
    (src / "bad.jpg").write_bytes(JPEG[: len(JPEG) // 2])
    (src / "big.png").write_bytes(BIG_PNG)
    url = lambda name: (src / name).as_uri()  # noqa: E731
    reqs = [
        ImageRequest(url("a.jpg")),
        ImageRequest(url("b.png"), _sha(PNG)),
        ImageRequest(url("bad.jpg")),
        ImageRequest(url("a.jpg") + "?v=2", _sha(PNG)),  # same file, other URL, wrong hash
        ImageRequest(url("missing.jpg")),
        ImageRequest(url("big.png")),
        ImageRequest("file://otherhost/x.jpg"),
        ImageRequest(url("")),  # a directory
    ]
    summary = _run(tmp_path, reqs, per_host=1)
    status = {r["url"]: r for r in _manifest_lines(tmp_path)}
    assert status[url("a.jpg")]["status"] == OK and status[url("b.png")]["status"] == OK
    assert status[url("bad.jpg")]["status"] == "not_an_image"
    assert status[url("a.jpg") + "?v=2"]["status"] == "hash_mismatch"
    assert status[url("missing.jpg")]["status"] == "not_found"
    assert status[url("big.png")]["status"] == "too_large"
    assert status["file://otherhost/x.jpg"]["status"] == "invalid_url"
    assert status[url("")]["status"] == "file_error"
    assert summary.ok == 2 and summary.total == 8
    assert cached_image_path(tmp_path / "cache", url("a.jpg")).read_bytes() == JPEG
    assert status[url("b.png")]["sha256"] == _sha(PNG) and status[url("b.png")]["attempts"] == 1
    assert is_permanent_failure("not_found") and is_permanent_failure("file_error")
    # A re-run settles everything from the manifest; a file that appears later is fetched with retry_failed.
    (src / "missing.jpg").write_bytes(JPEG)
    again = _run(tmp_path, reqs)
    assert again.reused == 8 and again.fetched == 0
    third = _run(tmp_path, reqs, retry_failed=True)
    assert third.counts[OK] == 3
