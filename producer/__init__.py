"""Producer side: validate and submit batches, follow them, read results and costs.

The names below are imported when first used (PEP 562): `otb --help` and `otb status` load only
what they run.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.lazy import lazy_names

if TYPE_CHECKING:
    from .batchfile import LineError, ParsedBatch, read_batch
    from .client import Client, Handle
    from .options import BadOption, SubmitOptions
    from .status import BatchNotFound
    from .submit import Submission, SubmissionRejected, submit

_HOME = {
    "LineError": "batchfile", "ParsedBatch": "batchfile", "read_batch": "batchfile",
    "BatchNotFound": "status", "Client": "client", "Handle": "client",
    "BadOption": "options", "SubmitOptions": "options",
    "Submission": "submit", "SubmissionRejected": "submit",
}

__all__ = sorted([*_HOME, "submit"])


__getattr__ = lazy_names(__name__, globals(), _HOME)


class _Producer(types.ModuleType):
    """`producer.submit` is the function, as it always was: once the submodule of the same name is
    loaded, the import system binds it as the package's attribute, which would hide the function."""

    @property
    def submit(self) -> Callable[..., Any]:
        from .submit import submit

        return submit

    @submit.setter
    def submit(self, _submodule: Any) -> None:
        pass  # the submodule stays reachable as sys.modules["producer.submit"] (`from producer.submit import ...`)


sys.modules[__name__].__class__ = _Producer
