"""The ASGI app: OpenAI-compatible `POST /v1/chat/completions`, `GET /health`, the demo page at `/`.

    app = create_app(ServeConfig(checkpoint="path/to/Molmo-7B-D-0924"))
    # or create_app(config, model=model, processor=processor) with objects already loaded

Answers carry two extra fields: `points` (`[{"x": .., "y": ..}]` in pixels of the request's image)
and `image_size` (`[w, h]`); streamed answers put them on the last chunk (the one with a
`finish_reason`).
"""

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from pathlib import Path

from molmo_jax.serve.batcher import Batcher, Job, QueueFullError, async_emitter
from molmo_jax.serve.requests import ImagePolicy, RequestError, parse_chat_request, parse_json, resolve_image

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServeConfig:
    checkpoint: str | None = None
    model_name: str | None = None  # reported as `model`; defaults to the checkpoint folder's name
    max_batch: int = 8
    batch_window_s: float = 0.02
    max_queue: int = 64
    max_new_tokens: int = 256  # server cap on max_tokens (also the compiled cache length)
    default_max_tokens: int = 200
    max_prompt_tokens: int = 2048  # token budget of one prompt (image tokens included)
    request_timeout_s: float = 120.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    allowed_image_dirs: tuple[str, ...] = ()
    allowed_url_hosts: tuple[str, ...] = ()
    style: str = "demo"
    dtype: str = "float32"


def _error(status: int, message: str, code: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def create_app(config: ServeConfig, *, model=None, processor=None, generator=None):
    """The FastAPI app. Loads the model / processor from `config.checkpoint` unless given."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    from molmo_jax.infer.decoding import Generator
    from molmo_jax.preprocess.image import ImageError, ImageTooLargeError, load_image
    from molmo_jax.preprocess.pointing import extract_points

    if processor is None:
        from molmo_jax.preprocess.processor import MolmoProcessor

        processor = MolmoProcessor.from_pretrained(config.checkpoint)
    if generator is None:
        if model is None:
            import jax.numpy as jnp

            import molmo_jax

            model = molmo_jax.load_pretrained(config.checkpoint, dtype=jnp.dtype(config.dtype))
        generator = Generator(model)
    model_name = config.model_name or (Path(config.checkpoint).name if config.checkpoint else "molmo")
    policy = ImagePolicy(
        max_bytes=config.max_image_bytes,
        allowed_dirs=tuple(Path(d) for d in config.allowed_image_dirs),
        allowed_hosts=tuple(config.allowed_url_hosts),
    )
    batcher = Batcher(
        generator,
        processor,
        max_batch=config.max_batch,
        batch_window_s=config.batch_window_s,
        max_queue=config.max_queue,
        max_new_tokens=config.max_new_tokens,
    )

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="molmo-jax", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.config = config
    app.state.processor = processor

    def prepare(req, image_ref) -> tuple[dict, tuple[int, int] | None]:
        """Blocking: fetch / decode the image, tokenize, check the token budget."""
        array = None
        if image_ref is not None:
            raw = resolve_image(image_ref, policy)
            try:
                array = load_image(raw, max_pixels=config.max_image_pixels)
            except ImageError as e:
                msg = str(e).replace(f"<{len(raw)} bytes>", "image")
                if isinstance(e, ImageTooLargeError):
                    raise RequestError(413, f"image too large: {msg}", "image_too_large") from None
                raise RequestError(
                    400, f"image_url does not hold a valid image: {msg}", "invalid_image"
                ) from None
        try:
            example = processor(images=array, text=req.prompt, style=config.style)
        except ValueError as e:
            raise RequestError(400, f"could not build the prompt: {e}") from None
        n = len(example["input_ids"])
        if n > config.max_prompt_tokens:
            raise RequestError(
                400,
                f"prompt is {n} tokens (image tokens included), over the token budget of "
                f"{config.max_prompt_tokens}: shorten the text",
                "prompt_too_long",
            )
        size = None if array is None else (int(array.shape[1]), int(array.shape[0]))
        return example, size

    @app.get("/health")
    async def health():
        return {
            "status": "ok" if batcher.alive else "down",
            "model": model_name,
            "queue": batcher.queue_size(),
            "max_queue": config.max_queue,
            "max_batch": config.max_batch,
            "max_new_tokens": config.max_new_tokens,
            "default_max_tokens": config.default_max_tokens,
            "served": batcher.served,
            "recent_batch_sizes": batcher.batch_sizes[-20:],
        }

    @app.get("/", response_class=HTMLResponse)
    async def index():
        from molmo_jax.serve.page import PAGE

        return HTMLResponse(PAGE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "molmo-jax"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        received = time.monotonic()
        try:
            data = parse_json(await request.body())
            req, image_ref = parse_chat_request(
                data, max_new_tokens=config.max_new_tokens, default_max_tokens=config.default_max_tokens
            )
            example, size = await asyncio.to_thread(prepare, req, image_ref)
        except RequestError as e:
            return _error(e.status, e.message, e.code)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(
            example=example,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            emit=async_emitter(loop, events),
            deadline=received + config.request_timeout_s,
        )
        try:
            batcher.submit(job)
        except QueueFullError as e:
            return _error(503, str(e), "queue_full")

        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prompt_tokens = int(len(example["input_ids"]))

        def extras(result: dict) -> dict:
            points = [] if size is None else extract_points(result["text"], *size)
            return {
                "points": [{"x": x, "y": y} for x, y in points],
                "image_size": list(size) if size else None,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": _completion_tokens(result, processor),
                    "total_tokens": prompt_tokens + _completion_tokens(result, processor),
                },
                "timing": {
                    "latency_s": round(time.monotonic() - received, 4),
                    "generation_s": round(result["generation_s"], 4),
                    "batch_size": result["batch_size"],
                },
            }

        async def next_event():
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(events.get(), timeout=remaining)

        if not req.stream:
            parts = []
            try:
                while True:
                    kind, payload = await next_event()
                    if kind == "delta":
                        parts.append(payload)
                    elif kind == "error":
                        status = 504 if "timed out" in payload else 500
                        return _error(status, payload, "timeout" if status == 504 else "generation_failed")
                    else:
                        break
            except TimeoutError:
                job.cancelled = True
                return _error(504, f"request timed out after {config.request_timeout_s:g} s", "timeout")
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": payload["text"]},
                        "finish_reason": payload["finish_reason"],
                    }
                ],
            }
            body.update(extras(payload))
            return JSONResponse(body)

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            body.update(extra)
            return f"data: {json.dumps(body)}\n\n"

        async def sse():
            yield chunk({"role": "assistant", "content": ""})
            try:
                while True:
                    kind, payload = await next_event()
                    if kind == "delta":
                        yield chunk({"content": payload})
                    elif kind == "error":
                        err = {"error": {"message": payload, "type": "server_error"}}
                        yield f"data: {json.dumps(err)}\n\n"
                        break
                    else:
                        yield chunk({}, payload["finish_reason"], **extras(payload))
                        break
            except TimeoutError:
                job.cancelled = True
                msg = f"request timed out after {config.request_timeout_s:g} s"
                yield f"data: {json.dumps({'error': {'message': msg, 'type': 'timeout'}})}\n\n"
            except asyncio.CancelledError:  # client disconnected
                job.cancelled = True
                raise
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _completion_tokens(result: dict, processor) -> int:
    ids = result["token_ids"]
    eos = processor.tokenizer.eos_id
    return len(ids) - (1 if ids and ids[-1] == eos else 0)
