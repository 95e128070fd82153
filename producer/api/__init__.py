"""The OpenAI-compatible HTTP API (`otb serve`) and its keys (`otb keys`)."""

from .app import ServeOptions, create_app
from .auth import KeyStore, Tenant
from .filestore import FileMeta, FileStore

__all__ = ["FileMeta", "FileStore", "KeyStore", "ServeOptions", "Tenant", "create_app"]
