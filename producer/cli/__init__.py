"""`otb`: thin click commands over the library; library errors become one clear line and exit 1.

The group lives here; the commands live by family: submitting.py (submit, following a batch),
batches.py (status, batches, results, cancel, retry), costs.py (models, estimate, report),
running.py (worker, emulator, run, demo); common.py holds what they share.
"""

from __future__ import annotations

import logging

import click

from .batches import batches, cancel_cmd, results, retry_cmd, status
from .costs import estimate, models, report
from .running import demo, emulator, run, worker
from .serving import keys, serve
from .submitting import submit_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opentoken-batch", prog_name="otb")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """opentoken-batch: OpenAI-shaped batches over Redis + RQ to Anthropic and Gemini, with exact costs.

    Exit status: 0 on success, 1 when a command fails, 2 when `submit --wait` or `run` saw the
    batch end with errored or expired requests.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (models, submit_cmd, status, batches, results, cancel_cmd, retry_cmd, estimate, report, worker,
                emulator, run, demo, serve, keys):
    main.add_command(command)

__all__ = ["main"]
