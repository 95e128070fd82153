"""Where each provider is reached and with which key: the facts settings.py needs at every start.

Apart from the adapters (which load the registry and pydantic) so that reading the environment, as
every `otb` command does, loads none of them. Each adapter takes its constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    api_key_env: str  # the environment variable holding the API key (named in the missing-key error)
    base_url_env: str  # the environment variable that points the provider elsewhere (a proxy, the emulator)
    default_base_url: str  # where the provider's API lives when nothing says otherwise


ENDPOINTS: dict[str, Endpoint] = {
    "anthropic": Endpoint("ANTHROPIC_API_KEY", "OTB_ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    "google": Endpoint("GEMINI_API_KEY", "OTB_GOOGLE_BASE_URL", "https://generativelanguage.googleapis.com"),
}
