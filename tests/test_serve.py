"""The HTTP server (`molmo_jax.serve`) against the golden tiny checkpoint, with FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from conftest import require_golden
from helpers import golden_tiny_checkpoint  # noqa: E402
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import molmo_jax  # noqa: E402
from molmo_jax.serve import ServeConfig, create_app  # noqa: E402

MAX_NEW = 6
PROMPT = "Point to the cat."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return golden_tiny_checkpoint(tmp_path_factory.mktemp("qwen2_tiny_serve"))


@pytest.fixture(scope="module")
def image_path():
    return require_golden("preprocess", "tiny_50x40", "image.png")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return molmo_jax.load_pretrained(checkpoint), molmo_jax.MolmoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint, loaded, image_path):
    from fastapi.testclient import TestClient

    model, processor = loaded
    config = ServeConfig(
        checkpoint=str(checkpoint),
        max_batch=4,
        batch_window_s=0.05,
        max_queue=2,
        max_new_tokens=MAX_NEW,
        default_max_tokens=MAX_NEW,
        max_prompt_tokens=400,
        max_image_bytes=100_000,
        max_image_pixels=600 * 600,
        allowed_image_dirs=(str(image_path.parent),),
        allowed_url_hosts=("images.example.com",),
    )
    app = create_app(config, model=model, processor=processor)
    with TestClient(app) as client:
        yield client, app


def _data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _body(url: str | None, prompt: str = PROMPT, **kw) -> dict:
    content = [{"type": "text", "text": prompt}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}


def _sse_events(text: str) -> list:
    events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def test_answer_and_stream_match_generate(server, loaded, image_path):
    client, _ = server
    model, processor = loaded
    expected = molmo_jax.generate(model, processor, [str(image_path)], [PROMPT], max_new_tokens=MAX_NEW)
    url = _data_url(image_path.read_bytes())

    r = client.post("/v1/chat/completions", json=_body(url, max_tokens=MAX_NEW, temperature=0))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["content"] == expected.texts[0]
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["image_size"] == [50, 40]
    assert out["points"] == [{"x": x, "y": y} for x, y in expected.points[0]]
    n_eos = int(expected.token_ids[0][-1] == processor.tokenizer.eos_id)
    assert out["usage"]["completion_tokens"] == len(expected.token_ids[0]) - n_eos

    r = client.post("/v1/chat/completions", json=_body(url, max_tokens=MAX_NEW, stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _sse_events(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected.texts[0]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "points" in chunks[-1] and chunks[-1]["image_size"] == [50, 40]

    # An allow-listed local path gives the same answer.
    r = client.post("/v1/chat/completions", json=_body(str(image_path), max_tokens=MAX_NEW))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected.texts[0]


def _wait_queued(app, n: int) -> None:
    end = time.monotonic() + 20
    while app.state.batcher.queue_size() < n:
        assert time.monotonic() < end, "requests never reached the queue"
        time.sleep(0.01)


def test_concurrent_requests_share_one_batch_and_queue_full_503(server, image_path):
    client, app = server
    batcher = app.state.batcher
    url = _data_url(image_path.read_bytes())
    results: dict[int, object] = {}

    def post(i):
        results[i] = client.post("/v1/chat/completions", json=_body(url, max_tokens=MAX_NEW))

    before = len(batcher.batch_sizes)
    batcher.pause()
    try:
        threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        _wait_queued(app, 2)
        # max_queue=2: a third request is refused while both wait.
        full = client.post("/v1/chat/completions", json=_body(url))
        assert full.status_code == 503
        assert "queued" in full.json()["error"]["message"]
    finally:
        batcher.resume()
    for t in threads:
        t.join(60)
    texts = {results[i].json()["choices"][0]["message"]["content"] for i in range(2)}
    assert len(texts) == 1  # same greedy answer in both rows
    assert batcher.batch_sizes[before:] == [2]
    assert all(results[i].json()["timing"]["batch_size"] == 2 for i in range(2))


def _png(w: int, h: int, noise: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (h, w, 3), np.uint8) if noise else np.full((h, w, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, status, needle",
    [
        (lambda: b"{not json", 400, "malformed JSON"),
        (lambda: json.dumps({"max_tokens": 3}).encode(), 400, "'messages'"),
        (lambda: json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "'content'"),
        (lambda: json.dumps(_body(None, prompt="")).encode(), 400, "no text"),
        (lambda: json.dumps(_body("data:image/png;base64,@@@notbase64")).encode(), 400, "bad base64"),
        (lambda: json.dumps(_body(_data_url(b"hello, not an image"))).encode(), 400, "not a readable image"),
        (lambda: json.dumps(_body(_data_url(_png(300, 300, noise=True)))).encode(), 413, "size limit"),
        (lambda: json.dumps(_body(_data_url(_png(700, 700)))).encode(), 413, "too large"),
        (lambda: json.dumps(_body(None, prompt="cat " * 500)).encode(), 400, "token budget"),
        (lambda: json.dumps(_body(None, max_tokens=MAX_NEW + 1)).encode(), 400, "max_tokens"),
        (lambda: json.dumps(_body(None, temperature="hot")).encode(), 400, "temperature"),
        (lambda: json.dumps(_body(None, stream="yes")).encode(), 400, "'stream'"),
        (lambda: json.dumps(_body("http://169.254.169.254/latest")).encode(), 403, "remote URLs"),
        (lambda: json.dumps(_body("https://evil.example.org/cat.png")).encode(), 403, "remote URLs"),
        (lambda: json.dumps(_body("/etc/passwd")).encode(), 403, "local image paths"),
        (lambda: json.dumps(_body("file:///etc/passwd")).encode(), 403, "local image paths"),
    ],
)
def test_bad_requests_are_4xx_naming_the_problem(server, make, status, needle):
    client, _ = server
    r = client.post("/v1/chat/completions", content=make(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"], r.json()


def test_good_request_after_bad_ones_and_health_and_page(server, image_path):
    client, _ = server
    assert client.post("/v1/chat/completions", content=b"[").status_code == 400
    r = client.post("/v1/chat/completions", json=_body(_data_url(image_path.read_bytes()), max_tokens=2))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text and "<canvas" in page.text


def test_allow_listed_url_host_is_fetched(server, image_path, monkeypatch):
    from molmo_jax.serve import requests as serve_requests

    fetched = []

    def fake_fetch(url, policy):
        fetched.append(url)
        return image_path.read_bytes()

    monkeypatch.setattr(serve_requests, "_fetch", fake_fetch)
    client, _ = server
    r = client.post("/v1/chat/completions", json=_body("https://images.example.com/cat.png", max_tokens=1))
    assert r.status_code == 200, r.text
    assert fetched == ["https://images.example.com/cat.png"]


def test_request_timeout_is_504_and_server_recovers(server, image_path):
    client, app = server
    config, batcher = app.state.config, app.state.batcher
    saved = config.request_timeout_s
    url = _data_url(image_path.read_bytes())
    batcher.pause()
    try:
        config.request_timeout_s = 0.3
        r = client.post("/v1/chat/completions", json=_body(url, max_tokens=2))
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
    finally:
        config.request_timeout_s = saved
        batcher.resume()
    r = client.post("/v1/chat/completions", json=_body(url, max_tokens=2))
    assert r.status_code == 200, r.text


def _load(client, body: dict, clients: int, per_client: int, deadline_s: float) -> tuple[list, float]:
    """`clients` threads each sending `per_client` requests in a row; returns responses and seconds."""
    responses: list = []
    lock = threading.Lock()
    stop = time.monotonic() + deadline_s

    def worker():
        for _ in range(per_client):
            if time.monotonic() > stop:
                return
            r = client.post("/v1/chat/completions", json=body)
            with lock:
                responses.append(r)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 30)
    return responses, time.monotonic() - start


@pytest.mark.slow
def test_load_32_clients_x_4_requests_batching_on_and_off(checkpoint, loaded, image_path, capsys):
    """Every request answered correctly and none lost, with and without batching (requests/s printed)."""
    from fastapi.testclient import TestClient

    model, processor = loaded
    url = _data_url(image_path.read_bytes())
    expected = molmo_jax.generate(
        model, processor, [str(image_path)], [PROMPT], max_new_tokens=MAX_NEW
    ).texts[0]
    rates = {}
    for label, max_batch in (("batching on", 8), ("batching off", 1)):
        config = ServeConfig(
            checkpoint=str(checkpoint),
            max_batch=max_batch,
            batch_window_s=0.02,
            max_queue=256,
            max_new_tokens=MAX_NEW,
            default_max_tokens=MAX_NEW,
            max_prompt_tokens=400,
        )
        app = create_app(config, model=model, processor=processor)
        with TestClient(app) as client:
            _load(client, _body(url), clients=32, per_client=1, deadline_s=120)  # compile the batch sizes
            responses, seconds = _load(client, _body(url), clients=32, per_client=4, deadline_s=240)
            sizes = list(app.state.batcher.batch_sizes)
        assert len(responses) == 128, f"{label}: {len(responses)} of 128 answered"
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ][:2]
        assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {expected}
        if max_batch > 1:
            assert max(sizes) > 1  # concurrent requests really shared batches
        rates[label] = 128 / seconds
    with capsys.disabled():
        print(
            "\nserving load, 32 clients x 4 requests: "
            + ", ".join(f"{k} {v:.1f} requests/s" for k, v in rates.items())
        )
