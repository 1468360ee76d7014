"""Counts of the code's shape: files and lines per folder, functions over 60 lines, and the
places that encode PNG and GIF files.

    python bench/layout_counts.py [ROOT]     (ROOT: a checkout; default this one)

Tests and benches are left out. Import cycles and upward imports are counted by
``tests/test_layout.py``.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    skip = (".venv", "tests", "bench", ".git", "docs")
    files = [p for p in root.rglob("*.py")
             if not any(x in skip or x.startswith(".") for x in p.relative_to(root).parts)]
    per_folder = defaultdict(lambda: [0, 0])
    long_functions = []
    png = gif = 0
    for path in files:
        relative = path.relative_to(root)
        folder = str(relative.parent) if str(relative.parent) != "." else "(top)"
        text = path.read_text()
        per_folder[folder][0] += 1
        per_folder[folder][1] += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append((length, f"{relative}:{node.name}"))
        png += len(re.findall(r'format="PNG"|savefig\(|def png_bytes', text))
        gif += len(re.findall(r'format="GIF"', text))
    for folder in sorted(per_folder):
        count, lines = per_folder[folder]
        print(f"{folder}: {count} files, {lines} lines")
    print(f"functions over 60 lines: {len(long_functions)}")
    for length, name in sorted(long_functions, reverse=True):
        print(f"  {length:4d} {name}")
    print(f"PNG encode sites: {png}, GIF encode sites: {gif}")


if __name__ == "__main__":
    main()
