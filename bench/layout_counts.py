import ast, sys, re
from pathlib import Path
root = Path(sys.argv[1])
files = [p for p in root.rglob("*.py") if not any(x in p.parts for x in (".venv", "tests", "bench", ".git"))]
from collections import defaultdict
per = defaultdict(lambda: [0, 0])
long_funcs = []
for p in files:
    rel = p.relative_to(root)
    folder = str(rel.parent) if str(rel.parent) != "." else "(top)"
    n = len(p.read_text().splitlines())
    per[folder][0] += 1; per[folder][1] += n
    tree = ast.parse(p.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > 60:
                long_funcs.append((length, f"{rel}:{node.name}"))
for k in sorted(per): print(f"{k}: {per[k][0]} files, {per[k][1]} lines")
print("functions over 60 lines:", len(long_funcs))
for l, n in sorted(long_funcs, reverse=True): print("  ", l, n)
# encoders: places that encode PNG/GIF
png = gif = 0
for p in files:
    t = p.read_text()
    png += len(re.findall(r'format="PNG"|savefig\(|def png_bytes', t))
    gif += len(re.findall(r'format="GIF"', t))
print("PNG encode sites:", png, "GIF encode sites:", gif)
