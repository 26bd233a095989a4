"""HTTP serving: an OpenAI-compatible chat completions API with request batching and a demo page.

Needs the `fastapi` and `uvicorn` packages (`httpx` too for allow-listed remote image URLs).
"""

from molmo_jax.serve.app import ServeConfig, create_app
from molmo_jax.serve.batcher import Batcher, Job, QueueFullError
from molmo_jax.serve.requests import RequestError

__all__ = ["Batcher", "Job", "QueueFullError", "RequestError", "ServeConfig", "create_app"]
