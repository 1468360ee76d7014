"""Errors with user-facing messages, shared by every layer of a run."""


class ClipFailure(RuntimeError):
    """A per-clip error whose message is already user-facing."""


class SetupError(RuntimeError):
    """A problem that stops the run before any clip (bad weights, target, layer ...): exit 2."""


class InterruptHandler:
    """The run's SIGINT / SIGTERM handler: raises ``KeyboardInterrupt`` and remembers that it
    fired, so an interrupt that a library turns into its own error (pandas' CSV parser raises
    ``ParserError``) is still seen as one (:func:`interrupted`)."""

    def __init__(self):
        self.fired = False

    def __call__(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.fired = True
        raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether an :class:`InterruptHandler` installed for SIGINT or SIGTERM has fired."""
    import signal
    return any(getattr(signal.getsignal(s), "fired", False)
               for s in (signal.SIGINT, signal.SIGTERM))
