"""Errors with user-facing messages, shared by every layer of a run."""


class ClipFailure(RuntimeError):
    """A per-clip error whose message is already user-facing."""


class SetupError(RuntimeError):
    """A problem that stops the run before any clip (bad weights, target, layer ...): exit 2."""
