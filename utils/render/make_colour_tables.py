"""Writes ``utils/render/colour_maps.npz``: the 256 colours of every colour map the pictures
and the explorer page offer, as matplotlib samples them, so that drawing needs no matplotlib.

    python -m utils.render.make_colour_tables
"""
from __future__ import annotations

from utils.render.encoders import save_npz
from utils.render.explorer import EXTRA_MAPS
from utils.render.figures import COLORMAPS, COLOUR_TABLES_FILE, matplotlib_table


def main() -> None:
    names = list(dict.fromkeys(COLORMAPS + EXTRA_MAPS))
    save_npz({name: matplotlib_table(name) for name in names}, COLOUR_TABLES_FILE)
    print(f"wrote {COLOUR_TABLES_FILE}")


if __name__ == "__main__":
    main()
