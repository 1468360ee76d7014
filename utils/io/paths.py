"""Where a run's files go: output folders, file stems, clip ids."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional, Sequence


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


def clip_ids(clips: Sequence[ClipSource]) -> List[str]:
    """One id per clip, unique in the run: the folder's name or the video's stem; a video keeps
    its extension when another clip has the same stem (``X/`` and ``X.mp4`` -> ``X``, ``X.mp4``)."""
    stems = [c.name for c in clips]
    ids = []
    for clip, stem in zip(clips, stems):
        if clip.is_video and stems.count(stem) > 1:
            ids.append(clip.path.name)
        else:
            ids.append(stem)
    return ids
