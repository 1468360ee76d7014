"""Per-method options of an evaluation run, shared by the synthetic and the real-clip evaluation."""
from __future__ import annotations


def method_options_for(name: str, info, options: dict) -> dict:
    """The options one method gets from ``options``: every key the method declares, then the
    entries of ``options[name]`` (a dict of options for that method only, e.g.
    ``{"rise": {"num_iter": 200}}``), which win. Raises ``ValueError`` for an option the
    method does not declare in its own dict."""
    taken = {k: v for k, v in options.items() if k in info.options}
    own = options.get(name)
    if own is not None:
        if not isinstance(own, dict):
            raise ValueError(f"options for method {name!r} must be a JSON object, got {own!r}")
        unknown = sorted(set(own) - set(info.options))
        if unknown:
            raise ValueError(f"method {name!r} has no option(s) {', '.join(unknown)}")
        taken.update(own)
    return taken
