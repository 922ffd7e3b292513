"""The errors ``mlp`` raises at its callers, standard library only: declared here rather than
beside the code that raises them, so that a command which only catches them (``sweep``'s CLI,
``sweep status`` among its commands) need not load the dataset reader or the training code to
name them (#27).
"""


class DataError(Exception):
    """The dataset is missing, corrupt or not in a format we read; the message names the file."""


class DivergedError(ArithmeticError):
    """Training produced a non-finite loss; carries where it happened."""

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}, batch {batch}")
        self.epoch, self.batch, self.loss = epoch, batch, loss


class InsufficientMemory(MemoryError):
    """A run would take more memory than the machine has available; raised before anything of
    it is allocated. Its message is one line: what, the estimate and what is available."""
