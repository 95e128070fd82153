"""`otb`: thin click commands over the library; library errors become one clear line and exit 1.

The group lives here; the commands live by family: submitting.py (submit, following a batch),
batches.py (status, batches, results, cancel, retry), costs.py (models, estimate, report),
running.py (worker, emulator, run, demo); common.py holds what they share.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

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



def entry() -> None:
    """The `otb` process (the entry point and `python -m producer.cli`): `main`, then out at once.

    Python's own exit tears down every module the command loaded, 60-90 ms on this machine for
    `otb submit --wait` or `otb status`, a quarter of the status. Once the command has finished (its
    exit status decided, output flushed) and no thread of its own still runs, the process ends
    there; anything else (a traceback, Ctrl-C, a thread still working) exits the usual way.
    """
    try:
        main()
    except SystemExit as done:
        if not isinstance(done.code, (int, type(None))) or _busy():
            raise
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: let Python say so as it always did
            raise done from None
        os._exit(done.code or 0)


def _busy() -> bool:
    """A thread other than this one that is not a daemon: the usual exit waits for it."""
    return any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate())


__all__ = ["entry", "main"]
