"""The run's choices that ``main.py`` checks before torch loads (so a usage error answers at
once): colour maps, scalings, score games, batch sizes, and which polarity a method can have."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from utils.render.formats import COLORMAPS, NORMALIZATIONS  # noqa: F401 - the CLI's choices
from vis_methods import METHODS

SCORE_GAMES = ("deletion", "insertion")
CPU_BATCH, CUDA_BATCH = 1, 8      # clips per forward/backward by default (bench/bench_gpu.py)


def polarity_error(polarity: str, methods: Sequence[str],
                   options: Mapping[str, Mapping[str, object]]) -> Optional[str]:
    """Why ``--polarity`` cannot be drawn for ``methods`` (None when it can): ``negative`` and
    ``both`` need a signed map; rectified maps and masks have no negative part."""
    if polarity == "positive":
        return None

    def signed(method: str) -> bool:
        chosen = options.get(method, {})
        return (METHODS[method].is_signed(chosen)
                and chosen.get("channel_reduce", "sum") != "max_abs")

    unsigned = [m for m in methods if m in METHODS and not signed(m)]
    if not unsigned:
        return None
    takers = [m for m in METHODS if METHODS[m].is_signed(METHODS[m].options)]
    return (f"--polarity {polarity} needs a signed map, and {', '.join(unsigned)} "
            f"{'has' if len(unsigned) == 1 else 'have'} no negative part; use a signed method "
            f"({', '.join(takers)}) or --counterfactual to show what argues against a class")
