"""The pages people look at, in a real browser (headless Chromium driven by Playwright): `otb serve`'s
/docs and /redoc, and `otb report --html`. Each must render from this machine alone (Chromium here can
reach only loopback: a page that needed a CDN would stay blank) and run nothing a report's data holds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import ServerProcess, real_clock_env
from producer.report import render_html

from ..test_html_report import EVIL, sample_report

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a root run on a closed network needs (no sandbox as root; no background calls to Google).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:  # .ci/run installs Debian's chromium; elsewhere: apt-get install chromium
        pytest.skip("no chromium on this machine")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {k: v for k, v in real_clock_env().items() if not k.startswith(("OTB_", "REDIS_URL"))}
    served = ServerProcess(env, "--emulator", log=tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    served.stop()


def open_page(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    """A new page at `url`; the URLs it requested and the errors it raised (console errors included)."""
    page = browser.new_page()
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.goto(url, wait_until="networkidle")
    return page, requested, errors


def test_the_docs_render_every_endpoint_from_this_server_alone(browser: Any, server: ServerProcess) -> None:
    page, requested, errors = open_page(browser, server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    for path in ("/v1/models", "/v1/chat/completions", "/v1/embeddings", "/v1/files", "/v1/batches",
                 "/v1/batches/{batch_id}/cancel"):
        assert any(p.replace("\u200b", "") == path for p in paths), (path, sorted(paths))
    # the chat body is typed: opening the operation shows its schema's required fields
    page.locator(".opblock-summary-path", has_text="/v1/chat/completions").first.click()
    page.get_by_text("Schema", exact=True).first.click()
    page.wait_for_selector(".model-box", timeout=10_000)
    schema = page.locator(".opblock.is-open .model-box").first.inner_text()
    assert "messages" in schema and "model" in schema
    assert requested and all(url.startswith(server.url) for url in requested), requested
    assert errors == []


def test_redoc_renders_from_this_server_alone(browser: Any, server: ServerProcess) -> None:
    page, requested, errors = open_page(browser, server.url + "/redoc")
    page.get_by_text("/v1/chat/completions").first.wait_for(timeout=15_000)
    assert "opentoken-batch" in page.inner_text("body")
    elsewhere = {url for url in requested if not url.startswith((server.url, "data:", "blob:", "blob:" + server.url))}
    # ReDoc's own sidebar credit shows its logo from its CDN (an <img>, no option turns it off): offline it
    # is one missing picture. Every script and style sheet, and the API description, come from here.
    assert elsewhere <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, requested
    assert [e for e in errors if "ERR_" not in e] == [], errors  # (the logo's failed load, where offline)


def test_the_html_report_shows_its_figures_and_runs_none_of_its_data(browser: Any, tmp_path: Path) -> None:
    report = sample_report()
    path = tmp_path / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    page, requested, errors = open_page(browser, path.as_uri())
    text = page.inner_text("body")
    assert EVIL in text  # shown as text: the script tag in a model id never runs (no dialog, no error)
    assert errors == []
    assert report["total"]["cost"]["total"] in text
    assert page.locator("svg rect").count() > 0  # the charts drew
    assert requested == [path.as_uri()]  # one self-contained page
