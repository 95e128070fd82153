"""Producer side: validate and submit batches, follow them, read results and costs."""

from .batchfile import LineError, ParsedBatch, read_batch
from .client import BatchNotFound, Client, Handle
from .submit import SubmissionRejected, submit

__all__ = ["BatchNotFound", "Client", "Handle", "LineError", "ParsedBatch", "SubmissionRejected", "read_batch", "submit"]
