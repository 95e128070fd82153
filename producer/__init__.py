"""Producer side: validate and submit batches, follow them, read results and costs."""

from .batchfile import LineError, ParsedBatch, read_batch
from .client import BatchNotFound, Client, Handle
from .options import BadOption, SubmitOptions
from .submit import Submission, SubmissionRejected, submit

__all__ = ["BadOption", "BatchNotFound", "Client", "Handle", "LineError", "ParsedBatch", "Submission",
           "SubmissionRejected", "SubmitOptions", "read_batch", "submit"]
