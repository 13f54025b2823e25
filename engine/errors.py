"""Error types the engine raises. Each message says what was wrong and what to do about it."""


class ReelsmithError(Exception):
    """Base class: a problem the user can act on (bad input, missing files, resources)."""


class InvalidInputError(ReelsmithError, ValueError):
    """A widget or input value that cannot work (size, frame count, wrong model for the node)."""


class ModelFilesError(ReelsmithError, FileNotFoundError):
    """A model folder or file is missing, incomplete, corrupt or of the wrong family."""


class CheckpointMismatchError(ReelsmithError, KeyError):
    """A checkpoint's keys or shapes do not match the model the layout says it holds."""

    def __str__(self) -> str:  # KeyError would repr() the message, quoting it
        return str(self.args[0]) if self.args else ""


class OutOfMemoryError(ReelsmithError, MemoryError):
    """The GPU ran out of memory; the message lists options that would fit."""


class BackendUnavailableError(ReelsmithError, RuntimeError):
    """An optional acceleration (attention kernel, fp8 matmul, compile) is not usable here."""


class CancelledError(ReelsmithError):
    """The user cancelled the run (ComfyUI's Cancel button or an interrupt)."""


class ParallelWorkerError(ReelsmithError, RuntimeError):
    """A GPU worker of a several-GPU run exited, crashed or failed; the message names its rank and log tail."""
