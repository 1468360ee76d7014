"""The explorer inline in a notebook: a small notebook run headless (nbclient, a real kernel)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (requirements-test.txt)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (requirements-test.txt)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (requirements-test.txt)")

CELLS = [
    """import numpy as np, torch
from vis_methods.result import Attribution
from utils.render import explorer
maps = torch.zeros(1, 1, 4, 8, 8)
maps[0, 0, :, 2:5, 3:6] = 1.0
attribution = Attribution(maps, ("",), False, ({"completeness_gap": 0.5},), "grad_cam", {})
frames = np.full((4, 8, 8, 3), 90, np.uint8)""",
    "explorer.show(attribution, frames, clip='notebook <clip>')",
]


def test_notebook_shows_the_viewer_inline(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    outputs = notebook.cells[1].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "execute_result"
    shown = outputs[0].data["text/html"]
    assert shown.startswith('<iframe class="videovisual-explorer" sandbox="allow-scripts"')
    # the whole page, quoted in srcdoc: its data block, the map's method and the escaped name
    assert "data-explorer=&quot;1&quot;" in shown and "explorer-data" in shown
    assert "grad_cam" in shown and "notebook &amp;lt;clip&amp;gt;" in shown
    assert "completeness_gap" in shown
