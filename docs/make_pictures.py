"""Makes every picture in docs/images/ from the bundled synthetic clips (``make docs-pictures``).

Runs ``main.py`` with ``demo_3dcnn`` on one bundled clip, then copies the chosen outputs into
docs/images/, shrunk and reduced to a palette so that the committed pictures stay small. No
picture in the docs is made any other way (tests/test_docs.py checks that docs/images/ holds
exactly the files listed in PICTURES).

    python docs/make_pictures.py                 # rewrite docs/images/
    python docs/make_pictures.py --out DIR       # write them to DIR instead
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "test_data" / "synthetic" / "circle moving left-s7_00000"
STEM = CLIP.name

# Each picture: (file in docs/images, main.py's method argument, output path under --out_dir,
# width it is shrunk to).
PICTURES = (
    ("grad_cam_grid.png", "grad_cam", f"grad_cam/demo_3dcnn/{STEM}.png", 640),
    ("compare_methods.png", "grad_cam,integrated_grad,occlusion",
     f"compare/demo_3dcnn/{STEM}.png", 520),
    ("temporal_sensitivity.png", "temporal_sensitivity",
     f"temporal_sensitivity/demo_3dcnn/{STEM}_temporal.png", 560),
)


def _shrink(source: Path, target: Path, width: int) -> None:
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)),
                                 Image.Resampling.LANCZOS)
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def make(out: Path) -> list:
    """Writes the pictures into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as runs:
        for name, method, produced, width in PICTURES:
            command = [sys.executable, str(ROOT / "main.py"), "--videos_dir", str(CLIP),
                       "--model", "demo_3dcnn", "--vis_method", method, "--no_gpu", "--quiet",
                       "--formats", "png", "--out_dir", runs]
            subprocess.run(command, check=True, cwd=ROOT)
            _shrink(Path(runs) / produced, out / name, width)
            written.append(out / name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    for path in make(args.out):
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
