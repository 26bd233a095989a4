"""Parsing and validating OpenAI-style chat requests into (prompt, image bytes, options).

Every problem raises `RequestError(status, message)` whose message names the field at fault.
Images come from `data:` URLs by default; local paths (`file://...` or a plain path) only under
`allowed_image_dirs`, and `http(s)` URLs only for hosts in `allowed_url_hosts`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclasses.dataclass
class ChatRequest:
    prompt: str
    image: bytes | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stream: bool
    model: str


def parse_json(body: bytes) -> dict:
    if not body:
        raise RequestError(400, "empty request body: expected a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _number(data: dict, name: str, default, kind, lo=None, hi=None):
    value = data.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"'{name}' must be a number, got {json.dumps(value)[:50]}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(400, f"'{name}' must be an integer, got {value}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise RequestError(400, f"'{name}' must be finite")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(400, f"'{name}'={value} is out of range [{lo}, {hi}]")
    return value


def _flag(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"'{name}' must be true or false, got {json.dumps(value)[:50]}")
    return value


def parse_chat_request(
    data: dict, *, max_new_tokens: int, default_max_tokens: int
) -> tuple[ChatRequest, Any]:
    """The validated request and the image reference (a `data:` URL, path or URL; None if no image)."""
    if "messages" not in data:
        raise RequestError(400, "missing required field 'messages'")
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(400, f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise RequestError(
                400, f"messages[{i}].role must be 'system', 'user' or 'assistant', got {role!r}"
            )
        if "content" not in m:
            raise RequestError(400, f"messages[{i}] is missing 'content'")
        if role != "system":
            turns.append((i, m))
    if len(turns) != 1 or turns[0][1]["role"] != "user":
        raise RequestError(
            400,
            "'messages' must hold exactly one user message (system messages are ignored); "
            "multi-turn conversations are not supported",
        )
    index, message = turns[0]
    content = message["content"]
    texts: list[str] = []
    images: list[Any] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            where = f"messages[{index}].content[{j}]"
            if not isinstance(part, dict) or "type" not in part:
                raise RequestError(400, f"{where} must be an object with a 'type'")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(400, f"{where}.text must be a string")
                texts.append(part["text"])
            elif part["type"] == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise RequestError(400, f"{where}.image_url.url must be a non-empty string")
                images.append(url)
            else:
                raise RequestError(
                    400, f"{where}.type {part['type']!r} is not supported (use 'text' or 'image_url')"
                )
    else:
        raise RequestError(400, f"messages[{index}].content must be a string or a list of parts")
    if len(images) > 1:
        raise RequestError(400, f"{len(images)} images in the message: at most one image per request")
    prompt = "\n".join(t for t in texts if t).strip()
    if not prompt:
        raise RequestError(400, f"messages[{index}] has no text: give the question as a 'text' part")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    req = ChatRequest(
        prompt=prompt,
        image=None,
        max_tokens=_number(
            {"max_tokens": max_tokens}, "max_tokens", default_max_tokens, int, 1, max_new_tokens
        ),
        temperature=_number(data, "temperature", 0.0, float, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, float, 1e-6, 1.0),
        top_k=_number(data, "top_k", 0, int, 0, 1_000_000),
        seed=_number(data, "seed", 0, int, 0, 2**31 - 1),
        stream=_flag(data, "stream"),
        model=str(data.get("model") or ""),
    )
    if data.get("n", 1) not in (1, None):
        raise RequestError(400, "'n' must be 1: one answer per request")
    return req, (images[0] if images else None)


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = 10 * 1024 * 1024
    allowed_dirs: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    fetch_timeout_s: float = 10.0


def decode_data_url(url: str, max_bytes: int) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise RequestError(400, "image_url: malformed data URL (expected data:image/...;base64,...)")
    if not head.endswith(";base64"):
        raise RequestError(400, "image_url: data URL must be base64-encoded (';base64,')")
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise RequestError(413, f"image is over the size limit of {max_bytes:,} bytes", "image_too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"image_url: bad base64 in data URL ({e})") from None
    if len(raw) > max_bytes:
        raise RequestError(
            413, f"image is {len(raw):,} bytes, over the size limit of {max_bytes:,} bytes", "image_too_large"
        )
    if not raw:
        raise RequestError(400, "image_url: data URL holds no bytes")
    return raw


def resolve_image(ref: str, policy: ImagePolicy) -> bytes:
    """Image bytes for a `data:` URL, an allow-listed local path or an allow-listed http(s) URL."""
    if ref.startswith("data:"):
        return decode_data_url(ref, policy.max_bytes)
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        if host not in {h.lower() for h in policy.allowed_hosts}:
            raise RequestError(
                403,
                f"image_url: fetching remote URLs is disabled for host {host!r} "
                "(the operator can allow hosts with --allow_url_host); send a data: URL instead",
                "url_not_allowed",
            )
        return _fetch(ref, policy)
    if parsed.scheme in ("file", ""):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else ref)
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        allowed = real is not None and any(real.is_relative_to(d.resolve()) for d in policy.allowed_dirs)
        if not allowed:
            raise RequestError(
                403,
                "image_url: local image paths are disabled or outside the allowed folders "
                "(the operator can allow folders with --allow_image_dir); send a data: URL instead",
                "path_not_allowed",
            )
        size = real.stat().st_size
        if size > policy.max_bytes:
            raise RequestError(
                413,
                f"image is {size:,} bytes, over the size limit of {policy.max_bytes:,} bytes",
                "image_too_large",
            )
        return real.read_bytes()
    raise RequestError(400, f"image_url: unsupported URL scheme {parsed.scheme!r}")


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=policy.fetch_timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise RequestError(400, f"image_url: fetching {url} returned HTTP {r.status_code}")
            chunks, total = [], 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > policy.max_bytes:
                    raise RequestError(
                        413,
                        f"image at {url} is over the size limit of {policy.max_bytes:,} bytes",
                        "image_too_large",
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as e:
        raise RequestError(400, f"image_url: could not fetch {url} ({type(e).__name__}: {e})") from None
