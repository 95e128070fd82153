"""The OpenAI-compatible HTTP API (`otb serve`) and its keys (`otb keys`).

Nothing is imported here: `otb` registers the commands on every start, and FastAPI is loaded only
when a server is built (`producer.api.app.create_app`), so `otb --help` stays fast. The one name
here is what `otb serve --help` shows without loading the rest.
"""

NO_AUTH_TENANT = "local"  # the tenant of every request under `otb serve --no-auth`
