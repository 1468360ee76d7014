"""Where a run's files go: output folders, file stems, clip ids."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from utils.io.errors import SetupError
from utils.io.clips import ClipSource


def model_folder_name(model: str) -> str:
    """The output folder of a model: its registry name, or for ``path/to/file.py:builder`` the
    file's name and the builder (``file.py_builder``)."""
    if model.startswith("hf:"):
        model = "hf_" + Path(model[3:].rstrip("/")).name
    elif ":" in model:
        source, _, function = model.rpartition(":")
        model = f"{Path(source).name}_{function}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def safe_name(name: str) -> str:
    """A folder-safe version of a method name (``grad*input`` -> ``grad_x_input``)."""
    return name.replace("*", "_x_").replace("/", "_")


def output_dir(out_dir: Path, method: str, model: str, save_label: Optional[str]) -> Path:
    folder = Path(out_dir) / safe_name(method) / model
    return folder / save_label if save_label else folder


def check_save_label(save_label: Optional[str]) -> None:
    """``--save_label`` is a sub-folder: relative, without ``..``."""
    if save_label is None:
        return
    parts = Path(save_label).parts
    if not parts or Path(save_label).is_absolute() or ".." in parts:
        raise SetupError(f"--save_label {save_label!r} must be a relative folder name without '..'")
    if any(ord(c) < 32 or c == "\x7f" for c in save_label):
        raise SetupError(f"--save_label {save_label!r} holds a control character (a newline?)")


def prepare_output_folders(out_dir: Path, folders: Iterable[Path]) -> None:
    """Before any clip: every folder the run writes (each method's folder and its
    ``summary.parts/``) lies inside ``out_dir`` once symbolic links are followed, is a folder,
    and takes a new file. Problems are :class:`SetupError` naming the folder."""
    root = Path(out_dir).resolve()
    for folder in folders:
        folder = Path(folder)
        resolved = folder.resolve()
        if resolved != root and root not in resolved.parents:
            raise SetupError(f"{folder} leads outside --out_dir {out_dir} (to {resolved}) "
                             "through a symbolic link")
        # The folders that exist must take a new file; else the nearest one above, where the
        # rest will be created.
        for place in [p for p in (folder, folder / "summary.parts") if p.exists()] or [
                next(p for p in folder.parents if p.exists())]:
            if not place.is_dir():
                raise SetupError(f"{place} exists and is not a folder")
            try:
                probe = place / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as error:
                raise SetupError(f"{place} is not writable ({error.strerror or error})") from None


MAX_STEM = 160


def file_stem(text: str) -> str:
    """An output file's stem for a clip id plus suffixes: characters that cannot or should not
    be in a file name (path separators, ``;`` which separates outputs in ``summary.csv``,
    control characters) become ``_``; a stem longer than :data:`MAX_STEM` characters keeps its
    start and a hash of the whole, so the temporary name of the atomic writer still fits the
    file system's 255-byte limit."""
    cleaned = "".join("_" if (c in '/\\;' or ord(c) < 32 or c == "\x7f") else c for c in text)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned != text:
        # Two ids that differ only in replaced characters must not share a file.
        cleaned += "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    if len(cleaned.encode("utf-8")) > MAX_STEM:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
        head = cleaned.encode("utf-8")[:MAX_STEM - 11].decode("utf-8", errors="ignore")
        cleaned = f"{head}-{digest}"
    return cleaned


def safe_fragment(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def readable_name(name: str) -> str:
    """A file name as text that can be written anywhere (UTF-8 files, figures, terminals) and
    turned back into the name (:func:`name_from_readable`). A name that is valid UTF-8 and holds
    no backslash is itself; otherwise each byte that is not UTF-8 becomes ``\\xHH`` and each
    backslash ``\\\\``, so the two forms never collide (only escaped names hold a backslash)."""
    if "\\" not in name and not any("\udc80" <= c <= "\udcff" for c in name):
        return name
    return "".join("\\\\" if c == "\\" else f"\\x{ord(c) - 0xdc00:02x}"
                   if "\udc80" <= c <= "\udcff" else c for c in name)


def printable(text: str) -> str:
    """``text`` with the odd bytes of non-UTF-8 file names in it (surrogate escapes) as
    ``\\xHH``, so it can be written to any UTF-8 file or stream."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(c if not "\ud800" <= c <= "\udfff" else
                       f"\\x{ord(c) - 0xdc00:02x}" if "\udc80" <= c <= "\udcff"
                       else f"\\u{ord(c):04x}" for c in text)


def name_from_readable(text: str) -> str:
    """The file name (as ``os.fsdecode`` gives it) that :func:`readable_name` turned into
    ``text``."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\\\", i):
            out.append("\\")
            i += 2
        elif text.startswith("\\x", i) and len(text) >= i + 4:
            out.append(chr(0xdc00 + int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def clip_ids(clips: Sequence[ClipSource]) -> List[str]:
    """One id per clip, unique in the run: the folder's name or the video's stem; a video keeps
    its extension when another clip has the same stem (``X/`` and ``X.mp4`` -> ``X``,
    ``X.mp4``). Names that are not valid UTF-8 are shown escaped (:func:`readable_name`)."""
    stems = [c.name for c in clips]
    ids = []
    for clip, stem in zip(clips, stems):
        if clip.is_video and stems.count(stem) > 1:
            ids.append(readable_name(clip.path.name))
        else:
            ids.append(readable_name(stem))
    return ids
