"""`otb submit` reads its input once, as it submits: stdin is not copied to a file, a path is opened
once, and a file larger than one slice of bodies lands whole with the batch's lifetime."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from click.testing import CliRunner

from producer.cli import main

LINES = 2500  # more than one slice of staged bodies (2000)


def batch_file(n: int) -> str:
    return "".join(json.dumps({"custom_id": f"r{i}", "model": "google/gemini-3-flash",
                               "messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n" for i in range(n))


def submit(args: list[str], redis_url: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": redis_url, "OTB_REGISTRY": ""}
    return CliRunner().invoke(main, ["submit", *args, "--json"], env=env, input=stdin, prog_name="otb")


def assert_landed_whole(conn, bid: str) -> None:  # type: ignore[no-untyped-def]
    assert int(conn.hget(f"otb:batch:{bid}", "total")) == LINES
    assert conn.hlen(f"otb:batch:{bid}:requests") == LINES
    assert conn.ttl(f"otb:batch:{bid}:requests") > 3600  # the batch's lifetime, not the staging TTL


def test_stdin_is_submitted_as_it_is_read_not_copied_to_a_file(real_redis, redis_server, monkeypatch):
    def no_copy(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("stdin copied to a temporary file (read twice)")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_copy)
    out = submit(["-"], redis_server.url, stdin=batch_file(LINES))
    assert out.exit_code == 0, out.output
    assert_landed_whole(real_redis, json.loads(out.output)["id"])


def test_a_file_is_opened_once(real_redis, redis_server, tmp_path, monkeypatch):
    src = tmp_path / "in.jsonl"
    src.write_text(batch_file(LINES))
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == src:
            opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    out = submit([str(src)], redis_server.url)
    assert out.exit_code == 0, out.output
    assert len(opened) == 1  # before: twice, once to validate and once to read the bodies
    assert_landed_whole(real_redis, json.loads(out.output)["id"])
