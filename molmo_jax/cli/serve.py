"""Serve a Molmo checkpoint over HTTP: OpenAI-compatible chat completions and a demo page.

    python -m molmo_jax.cli.serve --checkpoint DIR_OR_HUB_ID --port 8000 \\
        [--host 127.0.0.1] [--max_batch 8] [--batch_window_ms 20] [--max_queue 64] \\
        [--max_new_tokens 256] [--allow_image_dir /data/images] [--allow_url_host images.example.com]

Then open http://HOST:PORT/ or POST to /v1/chat/completions. Remote image URLs and local image
paths are refused unless allow-listed with --allow_url_host / --allow_image_dir.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "checkpoint folder (HF layout) or hub id", required=True)
flags.DEFINE_string("host", "127.0.0.1", "address to bind")
flags.DEFINE_integer("port", 8000, "port to bind")
flags.DEFINE_string("model_name", None, "model id reported in responses (default: the folder name)")
flags.DEFINE_integer("max_batch", 8, "most requests in one batched generation")
flags.DEFINE_float("batch_window_ms", 20.0, "how long the first request of a batch waits for others")
flags.DEFINE_integer("max_queue", 64, "queued requests before new ones get 503")
flags.DEFINE_integer("max_new_tokens", 256, "largest max_tokens a request may ask for")
flags.DEFINE_integer("default_max_tokens", 200, "max_tokens when a request gives none")
flags.DEFINE_integer("max_prompt_tokens", 2048, "token budget of one prompt, image tokens included")
flags.DEFINE_float("request_timeout_s", 120.0, "per-request timeout (queueing + generation)")
flags.DEFINE_integer("max_image_bytes", 10 * 1024 * 1024, "largest encoded image accepted")
flags.DEFINE_integer("max_image_pixels", 4096 * 4096, "largest decoded image (w * h) accepted")
flags.DEFINE_multi_string("allow_image_dir", [], "folder whose images may be referenced by local path")
flags.DEFINE_multi_string("allow_url_host", [], "host whose http(s) image URLs may be fetched")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter and compute dtype")
flags.DEFINE_string("log_level", "info", "uvicorn log level")


def main(argv) -> int:
    del argv
    import uvicorn

    from molmo_jax.checkpoints.hf import resolve_checkpoint_dir
    from molmo_jax.serve.app import ServeConfig, create_app

    folder = resolve_checkpoint_dir(FLAGS.checkpoint)
    config = ServeConfig(
        checkpoint=str(folder),
        model_name=FLAGS.model_name,
        max_batch=FLAGS.max_batch,
        batch_window_s=FLAGS.batch_window_ms / 1000.0,
        max_queue=FLAGS.max_queue,
        max_new_tokens=FLAGS.max_new_tokens,
        default_max_tokens=min(FLAGS.default_max_tokens, FLAGS.max_new_tokens),
        max_prompt_tokens=FLAGS.max_prompt_tokens,
        request_timeout_s=FLAGS.request_timeout_s,
        max_image_bytes=FLAGS.max_image_bytes,
        max_image_pixels=FLAGS.max_image_pixels,
        allowed_image_dirs=tuple(FLAGS.allow_image_dir),
        allowed_url_hosts=tuple(FLAGS.allow_url_host),
        dtype=FLAGS.dtype,
    )
    uvicorn.run(create_app(config), host=FLAGS.host, port=FLAGS.port, log_level=FLAGS.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
