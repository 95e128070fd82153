"""Every failure answers in OpenAI's shape with the right status and retry headers, on a real server."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from producer.api.errors import SERVER_ERROR

pytestmark = pytest.mark.e2e

SHAPE = {"message", "type", "param", "code"}


def test_an_unknown_route_is_openais_invalid_url(server, keys):
    response = httpx.post(f"{server.base_url}/nothing/here", headers={"Authorization": f"Bearer {keys['acme']}"})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "Invalid URL (POST /v1/nothing/here)",
                                          "type": "invalid_request_error", "param": None, "code": None}}
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("query,param", [({"limit": 0}, "limit"), ({"limit": "many"}, "limit"),
                                         ({"order": "sideways"}, "order"), ({"after": "x" * 500}, "after")])
def test_fastapi_validation_errors_are_openai_400s(acme, query, param):
    with pytest.raises(openai.BadRequestError) as caught:
        acme.files.list(**query)
    err = caught.value
    assert err.status_code == 400 and err.param == param
    assert set(err.response.json()["error"]) == SHAPE
    assert err.response.headers["x-should-retry"] == "false"


def test_a_crash_is_a_500_that_shows_nothing_of_ours(server, env, api_redis):
    from .conftest import create_key, log_of, sdk

    client = sdk(server, create_key(env, "corrupt"))
    api_redis.client().hset("otb:tenant:corrupt", "rpm", "not-a-number")  # a record no code path expects
    with pytest.raises(openai.InternalServerError) as caught:
        client.models.list()
    body = caught.value.response.json()
    assert body == {"error": {"message": SERVER_ERROR, "type": "server_error", "param": None, "code": None}}
    assert "x-should-retry" not in caught.value.response.headers  # a 500 may pass on a retry
    assert "ValueError" in log_of(server)  # the traceback is in the server's log, not in the answer


def test_rate_limited_answers_say_when_to_retry(server, env):
    from .conftest import create_key, sdk

    client = sdk(server, create_key(env, "slow", "--rpm", "1"))
    client.models.list()  # the bucket holds one request
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert "x-should-retry" not in headers  # waiting fixes it: the SDK retries after retry-after
    assert set(caught.value.response.json()["error"]) == SHAPE


def test_docs_are_served_without_a_key(server):
    assert httpx.get(f"{server.url}/docs").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/models", "/v1/files", "/v1/files/{file_id}/content"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_the_internet(server, page):
    """Swagger UI and ReDoc come from this server, so a machine without internet still shows them."""
    html = httpx.get(f"{server.url}{page}").text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # no CDN, fonts or favicon
    urls = set(re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html))
    assert "/openapi.json" in urls and all(u.startswith("/") for u in urls), urls
    kinds = {}
    for url in urls:
        answer = httpx.get(f"{server.url}{url}")
        assert answer.status_code == 200, url
        kinds[url.rsplit(".", 1)[-1]] = answer.headers["content-type"].split(";")[0]
    assert kinds["js"] == "text/javascript" and kinds.get("css", "text/css") == "text/css", kinds
