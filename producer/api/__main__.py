"""`python -m producer.api ...`: the `otb` group with `serve` and `keys` registered.

A local hook until `otb` itself registers them (`producer.api.commands.register(main)`); the tests
and bench.harness.ServerProcess start the server through it.
"""

from producer.api.commands import register
from producer.cli import main

if "serve" not in main.commands:
    register(main)

main()
