"""Docs that cannot drift: the site builds strictly, every shell command in the README and the
docs runs here (on tiny inputs substituted for the documented ones) or carries a visible
``# needs: ...`` marker, the option reference equals a fresh generation from the parser, the
pictures come from docs/make_pictures.py, and the help and errors say what the code does."""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

import main
from tests.conftest import ROOT

DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
MARKER = "# needs:"
# The tiny inputs the documented clip folders are replaced by: one bundled synthetic clip, three
# for the views that need a folder (an embedding needs at least 3 clips).
TINY_CLIPS = ("circle moving left-s7_00000", "circle moving right-s7_00001",
              "circle moving up-s7_00002")
DEMO_CLASS = "circle moving left"
# Methods whose cost is their iteration count; a documented command without --num_iter runs
# them here with a few iterations.
ITERATIVE = {"integrated_grad", "smooth_grad", "2d_ep", "3d_ep", "step", "rise", "class_model"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ extracting the commands

@dataclass
class Command:
    file: Path
    line: int
    text: str               # continuation lines joined, trailing marker kept
    needs: Optional[str]    # what the marker says it needs; None: the tests run it

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text}"


def fenced_blocks(text: str) -> List[Tuple[str, int, List[str]]]:
    """``(language, first line number, lines)`` of every fenced code block."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start, body = opening.group(2), opening.group(3).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((language, start, body))
        i += 1
    return blocks


def commands_in(path: Path) -> List[Command]:
    found = []
    for language, start, body in fenced_blocks(path.read_text()):
        if language not in SHELL_LANGUAGES:
            continue
        pending: Optional[str] = None
        i = 0
        while i < len(body):
            line_no, line = start + i, body[i].strip()
            while line.endswith("\\") and i + 1 < len(body):
                i += 1
                line = line[:-1].rstrip() + " " + body[i].strip()
            i += 1
            if not line:
                continue
            if line.startswith("#"):
                if line.startswith(MARKER):
                    pending = line[len(MARKER):].strip()
                continue
            needs = pending
            if MARKER in line:
                needs = line.split(MARKER, 1)[1].strip()
            found.append(Command(path, line_no, line, needs))
            pending = None
    return found


def all_commands() -> List[Command]:
    return [c for path in DOC_FILES for c in commands_in(path)]


# ------------------------------------------------------------------ running them on tiny inputs

class Runner:
    """Runs one page's commands in order in one scratch folder (``test_data`` linked in), so a
    page's set-up commands (saving weights, writing a class list) serve its later commands."""

    def __init__(self, work: Path, page: Path):
        self.work = work
        self.out = work / "out"
        (work / "test_data").symlink_to(ROOT / "test_data")
        self.clips, self.folder = work / "tiny_clip", work / "tiny_folder"
        shutil.copytree(ROOT / "test_data" / "synthetic" / TINY_CLIPS[0], self.clips / TINY_CLIPS[0])
        for name in TINY_CLIPS:
            shutil.copytree(ROOT / "test_data" / "synthetic" / name, self.folder / name)
        for language, _, body in fenced_blocks(page.read_text()):
            source = "\n".join(body)
            # The page's own-model example: the builder file its commands load.
            if language == "python" and "def build()" in source:
                (work / "my_model.py").write_text(source + "\n")

    def run(self, command: Command) -> None:
        tokens = shlex.split(command.text, comments=True)
        env = {}
        while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
            key, value = tokens.pop(0).split("=", 1)
            env[key] = value
        assert tokens, command.where()
        head = tokens[0]
        if head == "make":
            return self.run_make(tokens[1:], command)
        if head in ("python", "python3", ".venv/bin/python", "videovisual"):
            args = tokens[1:] if head != "videovisual" else ["main.py"] + tokens[1:]
            if args[:1] == ["main.py"]:
                return self.run_main(args[1:], command)
            if args[:2] == ["-m", "utils.demo.synthetic"]:
                return self.run_synthetic(args[2:], command)
            if args[:1] == ["docs/gen_options.py"]:
                return self.subprocess([sys.executable, str(ROOT / "docs" / "gen_options.py"),
                                        "--check"], command)
            if args[:1] == ["-c"]:
                return self.subprocess([sys.executable] + args, command)
        if head == "printf":
            return self.subprocess(["bash", "-c", command.text], command)
        pytest.fail(f"no tiny substitute for this command; run it here or mark it "
                    f"'{MARKER} ...': {command.where()}")

    def subprocess(self, argv: List[str], command: Command) -> None:
        done = subprocess.run(argv, cwd=self.work, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, f"{command.where()}\n{done.stderr[-2000:]}"

    def run_make(self, targets: List[str], command: Command) -> None:
        assert targets == ["demo"], f"only make demo has a tiny substitute: {command.where()}"
        recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
        tokens = shlex.split(recipe.replace("$(PY)", "python"))
        assert tokens[:2] == ["python", "main.py"], recipe
        self.run_main(tokens[2:], command)

    def run_synthetic(self, args: List[str], command: Command) -> None:
        args = _set(_set(args, "--num_clips", "1"), "--out", str(self.work / "generated"))
        self.subprocess([sys.executable, "-m", "utils.demo.synthetic"] + args, command)

    def run_main(self, args: List[str], command: Command) -> None:
        if "--help" in args:
            with pytest.raises(SystemExit) as stop:
                main.main(args)
            assert stop.value.code == 0, command.where()
            return
        model = _get(args, "--model") or "i3d"
        assert not model.startswith("hf:"), f"a Hugging Face model must be marked: {command.where()}"
        substituted = not (model.startswith("demo_") or ":" in model)
        if substituted:  # a real network (weights not bundled or slow here): the demo 3-D CNN
            args = _set(args, "--model", "demo_3dcnn")
        from vis_methods import VIEWS
        method = _get(args, "--vis_method") or ""
        videos = _get(args, "--videos_dir")
        if not (videos and videos.startswith("test_data/synthetic/") and (ROOT / videos).is_dir()):
            folder_view = method in VIEWS and VIEWS[method].scope == "folder"
            args = _set(args, "--videos_dir", str(self.folder if folder_view else self.clips))
        target = _get(args, "--target")
        if substituted and target not in (None, "label", "pred") and not target.isdigit():
            args = _set(args, "--target", DEMO_CLASS)
        if set(method.split(",")) & ITERATIVE and "--num_iter" not in args:
            args += ["--num_iter", "3"]   # tiny: a few iterations show the command works
        args = _set(args, "--out_dir", str(self.out)) + ["--no_gpu", "--quiet"]
        code = main.main(args)
        assert code == 0, f"exit {code}: {command.where()} (ran as main.py {shlex.join(args)})"


def _get(args: List[str], flag: str) -> Optional[str]:
    return args[args.index(flag) + 1] if flag in args else None


def _set(args: List[str], flag: str, value: str) -> List[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


# ------------------------------------------------------------------ the tests

def test_commands_are_found_and_every_marker_says_what_it_needs():
    commands = all_commands()
    files = {c.file for c in commands}
    assert ROOT / "README.md" in files and len(files) >= 10
    assert "make demo" in [c.text.split("#")[0].strip() for c in commands]
    for command in commands:
        assert command.needs is None or len(command.needs) >= 5, command.where()


def test_the_extractor_reads_markers_and_continuations(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```bash\n# a comment\npython main.py --a \\\n    --b\n"
                    "# needs: a GPU\npython x.py\npython y.py   # needs: hours\n```\n\n"
                    "```python\nprint('not a command')\n```\n")
    found = commands_in(page)
    assert [(c.text.split("#")[0].strip(), c.needs) for c in found] == [
        ("python main.py --a --b", None), ("python x.py", "a GPU"), ("python y.py", "hours")]


@pytest.mark.parametrize("page", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_runs_or_is_marked(page, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    runnable = [c for c in commands_in(page) if c.needs is None]
    if not runnable:
        return
    runner = Runner(tmp_path, page)
    for command in runnable:
        runner.run(command)


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (make setup installs requirements-docs.txt)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "def explain" in api or "explain" in api and "Attribution" in api


def test_option_reference_is_generated_from_the_parser():
    generator = _load("gen_options", DOCS / "gen_options.py")
    committed = (DOCS / "reference" / "options.md").read_text()
    assert committed == generator.render(), "run python docs/gen_options.py"
    # what --help prints for a flag is what the page says
    help_text = " ".join(main.build_parser().format_help().split())
    assert "default: 1 on the CPU, 8 on CUDA" in help_text
    assert "(default: 1 on the CPU, 8 on CUDA)" in committed


def test_batch_size_help_states_the_runner_defaults():
    from utils.pipeline.runner import default_batch_size
    cpu, cuda = default_batch_size(torch.device("cpu")), default_batch_size(torch.device("cuda"))
    action = next(a for a in main.build_parser()._actions if a.dest == "batch_size")
    assert f"default: {cpu} on the CPU, {cuda} on CUDA" in action.help
    assert (cpu, cuda) == (1, 8)


def test_quiet_hides_the_per_clip_lines(tmp_path, capsys):
    clip = ROOT / "test_data" / "synthetic" / TINY_CLIPS[0]
    base = ["--videos_dir", str(clip), "--model", "demo_3dcnn", "--vis_method", "grad",
            "--formats", "npy", "--no_gpu", "--overwrite"]
    assert main.main(base + ["--out_dir", str(tmp_path / "a")]) == 0
    loud = capsys.readouterr().err
    assert f"{TINY_CLIPS[0]}: label circle moving left; prediction" in loud
    assert main.main(base + ["--out_dir", str(tmp_path / "b"), "--quiet"]) == 0
    quiet = capsys.readouterr().err
    assert "prediction" not in quiet and "done now" in quiet
    action = next(a for a in main.build_parser()._actions if a.dest == "quiet")
    assert "per-clip lines" in action.help


@pytest.mark.parametrize("argv, says", [
    (["--videos_dir", "x", "--vis_method", "nope"], "argument --vis_method: unknown method 'nope'"),
    (["--videos_dir", "x", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: --videos_dir"),
    (["--videos_dir", "x", "--topk", "0"], "--topk must be at least 1"),
    (["--videos_dir", "x", "--vis_method", "grad", "--num_iter", "5"], "grad does not take --num_iter"),
])
def test_a_bad_option_is_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("main.py: error: ") and says in lines[0]
    assert lines[0].endswith("(see main.py --help)")


def test_the_errors_page_shows_the_real_message():
    page = (DOCS / "guide" / "errors.md").read_text()
    shown = next(body for language, _, body in fenced_blocks(page) if language == "text")
    argv = shlex.split(shown[0].lstrip("$ "))[2:]
    done = subprocess.run([sys.executable, "main.py"] + argv, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    head, _, tail = shown[1].partition("...")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(head) and done.stderr.rstrip().endswith(tail.strip())


def test_pictures_come_from_the_script_and_stay_small(tmp_path):
    pictures = _load("make_pictures", DOCS / "make_pictures.py")
    names = {p[0] for p in pictures.PICTURES}
    committed = {p.name: p for p in (DOCS / "images").iterdir()}
    assert set(committed) == names, "docs/images holds only what docs/make_pictures.py makes"
    assert sum(p.stat().st_size for p in committed.values()) < 300 * 1024
    used = set()
    for path in DOC_FILES:
        used |= {Path(m).name for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())}
    assert used == names, "every picture is used and every used picture is made"
    made = {p.name: p for p in pictures.make(tmp_path)}
    for name, path in committed.items():
        with Image.open(path) as old, Image.open(made[name]) as new:
            assert old.size == new.size, name


def test_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_every_benchmark_table_says_its_command_and_machine():
    for page in sorted((DOCS / "benchmarks").glob("*.md")):
        if page.name == "index.md":
            continue
        text = page.read_text()
        assert "machine" in text.lower(), page.name
        assert commands_in(page) or "not part of the project's scripts" in text, page.name


def _snippets(page: Path) -> List[Tuple[str, Optional[str], str]]:
    """``(file, literal it goes into or None, code)`` for the python blocks of the development
    page: first line ``# path`` (a new file, or code appended to it) or ``# path, in NAME:``."""
    found = []
    for language, _, body in fenced_blocks(page.read_text()):
        if language != "python" or not body or not body[0].startswith("# "):
            continue
        head = re.match(r"^# (\S+\.py)(?:, in (\w+):)?$", body[0])
        if head:
            found.append((head.group(1), head.group(2), "\n".join(body[1:]) + "\n"))
    return found


def test_the_development_examples_plug_in(tmp_path):
    """The development page's model, method and format snippets, applied to a copy of the
    project, give a model, a method and a format that the command line runs."""
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("models", "vis_methods", "utils"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    shutil.copy(ROOT / "main.py", copy / "main.py")
    snippets = _snippets(DOCS / "development" / "index.md")
    assert {f for f, _, _ in snippets} == {"models/my_net.py", "models/__init__.py",
                                          "vis_methods/gradient.py", "vis_methods/__init__.py",
                                          "utils/render/formats.py",
                                          "utils/render/encoders.py"}
    for file, literal, code in snippets:
        path = copy / file
        text = path.read_text() if path.exists() else ""
        if literal is None:
            path.write_text(text + "\n\n" + code)
            continue
        opening = re.search(rf"^{literal}\b.*[({{]\n", text, re.M)
        assert opening, (file, literal)
        path.write_text(text[:opening.end()] + code + text[opening.end():])
    clip = ROOT / "test_data" / "synthetic" / TINY_CLIPS[0]

    def run(*args):
        return subprocess.run([sys.executable, "main.py", "--videos_dir", str(clip), "--no_gpu",
                               "--quiet", "--out_dir", str(tmp_path / "out"), *args], cwd=copy,
                              capture_output=True, text=True, timeout=300)

    done = run("--model", "my_net", "--vis_method", "grad_squared,grad", "--formats", "npy,webp")
    assert done.returncode == 0, done.stderr[-2000:]
    # the clip's label is not one of my_net's classes: the prediction is explained (suffix _<class>)
    squared = np.load(next((tmp_path / "out" / "grad_squared" / "my_net").glob("*.npy")))
    plain = np.load(next((tmp_path / "out" / "grad" / "my_net").glob("*.npy")))
    assert squared.shape == plain.shape == (8, 56, 56)
    assert squared.min() >= 0 and squared.max() > 0 and plain.min() < 0   # the new function ran
    # the new format's row and encoder: an animation per map and one of the methods side by side
    for folder in ("grad_squared", "grad", "compare"):
        animation = next((tmp_path / "out" / folder / "my_net").glob("*.webp"))
        with Image.open(animation) as image:
            assert image.format == "WEBP" and image.n_frames == 8
    helped = subprocess.run([sys.executable, "main.py", "--help"], cwd=copy, capture_output=True,
                            text=True, timeout=120).stdout
    assert "grad_squared" in helped and "webp (the animation as animated WebP)" in " ".join(helped.split())
    assert "my_net" in helped


def test_the_methods_table_agrees_with_the_registry():
    """The methods guide's table (names, signed, options and their defaults) says what the
    registry declares: every flag it names is declared by the method, with that default."""
    from vis_methods import METHODS
    text = (DOCS / "guide" / "methods.md").read_text()
    table = text[text.index("| name | what the map is |"):].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    seen, cells_of = set(), {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        for name in names:
            assert name in METHODS, name
            cells_of[name] = cells
        seen |= set(names)
    assert seen == set(METHODS), set(METHODS) ^ seen
    for name, cells in cells_of.items():
        info = METHODS[name]
        assert cells[2] == ("yes" if info.is_signed(info.options) else "no"), name
        options = cells[3]
        like = re.fullmatch(r"as `([^`]+)`", options)
        if like:
            options = cells_of[like.group(1)][3]
        for flag in re.findall(r"`--(\w+)", options):
            assert flag in info.options, f"{name}: --{flag} is not declared"
        for flag, value in re.findall(r"`--(\w+) ([^`]+)`", options):
            if value.isupper():
                continue  # a placeholder (``--score_cam_channels N``), not a default
            default = info.options[flag]
            default = default[0] if isinstance(default, tuple) and len(default) == 1 else default
            try:
                assert float(value) == float(default), f"{name}: --{flag} {value} vs {default}"
            except (TypeError, ValueError):
                assert value == str(default), f"{name}: --{flag} {value} vs {default}"
