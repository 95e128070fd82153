"""`python -m producer.cli`: the same `otb` as the installed entry point."""

from producer.cli import entry

entry()
