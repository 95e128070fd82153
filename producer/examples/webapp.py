"""A small web app that hands chat requests to opentoken-batch workers and returns their answers.

    REDIS_URL=redis://127.0.0.1:6379/0 python producer/examples/webapp.py --port 8080
    curl -s localhost:8080/ask -d '{"prompt": "Name three uses of Redis", "customer": "acme"}'

The app never calls a provider itself: it enqueues, and waits for the completion event in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

from producer import Client


async def ask(request: web.Request) -> web.Response:
    payload = await request.json()
    client: Client = request.app["client"]
    chat = {"model": payload.get("model", "google/gemini-3-flash"),
            "messages": [{"role": "user", "content": payload["prompt"]}], "max_tokens": 300}
    loop = asyncio.get_running_loop()
    # Client is synchronous: submit and wait in a thread so the web server keeps serving.
    handle = await loop.run_in_executor(None, lambda: client.submit_one(chat, tags={"app": "webapp", "customer": payload.get("customer", "-")}))
    line = await loop.run_in_executor(None, lambda: handle.result(timeout=120))
    if line["meta"]["outcome"] != "succeeded":
        error = line["error"] or line["response"]["body"]["error"]
        return web.json_response({"error": error}, status=502)
    message = line["response"]["body"]["choices"][0]["message"]
    return web.json_response({"answer": message["content"], "cost_usd": line["cost"]["total"],
                              "batch": handle.batch_id})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app = web.Application()
    app["client"] = Client.from_env()
    app.router.add_post("/ask", ask)
    web.run_app(app, host="127.0.0.1", port=args.port, print=lambda *_: print(json.dumps({"listening": args.port}), flush=True))


if __name__ == "__main__":
    main()
