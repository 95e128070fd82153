"""A small web app that hands chat requests to opentoken-batch workers and returns their answers.

    REDIS_URL=redis://127.0.0.1:6379/0 python producer/examples/webapp.py --port 8080
    curl -s localhost:8080/ask -d '{"prompt": "Name three uses of Redis", "customer": "acme"}'

The app never calls a provider itself: it enqueues, and waits for the completion event in Redis.
A bad request (not JSON, no prompt, an unknown model) gets a 400 with an OpenAI-shaped error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiohttp import web

from producer import Client
from producer.submit import SubmissionRejected
from worker.errors import ConfigError

DEFAULT_MODEL = "google/gemini-3-flash"


def _error(status: int, message: str, code: str = "invalid_request") -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body, status=status)


async def ask(request: web.Request) -> web.Response:
    try:
        payload = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _error(400, 'the body must be JSON, e.g. {"prompt": "Name three uses of Redis"}')
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str) or not payload["prompt"]:
        return _error(400, "'prompt' is required: the question to ask, a non-empty string")
    client: Client = request.app["client"]
    chat = {"model": payload.get("model", DEFAULT_MODEL),
            "messages": [{"role": "user", "content": payload["prompt"]}], "max_tokens": 300}
    tags = {"app": "webapp", "customer": str(payload.get("customer", "-"))}
    loop = asyncio.get_running_loop()
    # Client is synchronous: submit and wait in a thread so the web server keeps serving.
    try:
        handle = await loop.run_in_executor(None, lambda: client.submit_one(chat, tags=tags))
    except SubmissionRejected as exc:  # unknown model, a parameter it refuses, ...: the line's own error
        return web.json_response(exc.errors[0].error.to_openai(), status=400)
    try:
        line = await loop.run_in_executor(None, lambda: handle.result(timeout=120))
    except TimeoutError:
        return _error(504, f"no answer within 120 s (is an `otb worker` running?); batch {handle.batch_id}", "timeout")
    return _answer(line, handle.batch_id)


def _answer(line: dict[str, Any], batch_id: str) -> web.Response:
    if line["meta"]["outcome"] != "succeeded":
        error = line["error"] or line["response"]["body"]["error"]
        return web.json_response({"error": error}, status=502)
    message = line["response"]["body"]["choices"][0]["message"]
    return web.json_response({"answer": message["content"], "cost_usd": line["cost"]["total"], "batch": batch_id})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        client = Client.from_env()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    app = web.Application()
    app["client"] = client
    app.router.add_post("/ask", ask)
    web.run_app(app, host="127.0.0.1", port=args.port, print=lambda *_: print(json.dumps({"listening": args.port}), flush=True))


if __name__ == "__main__":
    main()
