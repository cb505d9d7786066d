"""Label maps: HxW integer arrays of class IDs, stored as lossless single-channel images.

A label map is read as the integers in the file, never as colours: a palette ('P') PNG gives
its palette *indices*, an 8-bit greyscale PNG gives uint8 IDs, a 16-bit PNG gives uint16 IDs.
Lossy formats (JPEG) are refused because compression invents IDs at class boundaries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastv2v.errors import UserError

#: Suffixes accepted for label maps (lossless formats only).
LABEL_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".webp"})
_LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg"})
_HOW_TO_SAVE = "save the class IDs as a single-channel 8- or 16-bit PNG or a palette PNG"


def read_label_map(path: str | os.PathLike, *, num_classes: int | None = None) -> np.ndarray:
    """Read one label map as an HxW array of class IDs (uint8, or uint16 for 16-bit files).

    An RGB file whose three channels are equal (a greyscale map saved as RGB) is accepted;
    a real colour image is refused, since its colours are not class IDs. With ``num_classes``
    every ID must be below it, so a map from the wrong dataset is caught here, with its
    file name, rather than as an index error inside the model.
    """
    path = Path(path)
    if path.suffix.lower() in _LOSSY_SUFFIXES:
        raise UserError(f"{path} is a JPEG, whose lossy compression corrupts class IDs; {_HOW_TO_SAVE}.")
    try:
        with Image.open(path) as img:
            img.load()
            ids = _ids_from_image(img, path)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read as a label map ({exc}); check that it is a valid PNG.") from None
    if num_classes is not None and ids.size:
        top = int(ids.max())
        if top >= num_classes:
            raise UserError(
                f"{path} contains class ID {top} but the model knows only {num_classes} classes "
                f"(0-{num_classes - 1}); use label maps from the dataset the model was trained on."
            )
    return ids


def _ids_from_image(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "L", "1"):
        return np.asarray(img, dtype=np.uint8)
    if mode in ("PA", "LA"):  # the alpha band carries no class information
        return np.asarray(img.getchannel(0), dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16, copy=False)
    if mode == "I":
        ids = np.asarray(img)
        if ids.size and (ids.min() < 0 or ids.max() > 65535):
            raise UserError(f"{path} holds IDs outside 0-65535; {_HOW_TO_SAVE}.")
        return ids.astype(np.uint16)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0])
        raise UserError(f"{path} is a colour image, not a label map; {_HOW_TO_SAVE}.")
    raise UserError(f"{path} has pixel mode {mode!r}, which is not a label map; {_HOW_TO_SAVE}.")


def write_label_map(path: str | os.PathLike, ids: np.ndarray, *, palette: np.ndarray | None = None) -> None:
    """Write class IDs losslessly: 8-bit PNG (palette PNG if ``palette`` is given), else 16-bit.

    ``palette`` is a (K, 3) uint8 array of RGB colours for IDs 0..K-1; it only changes how the
    file looks in an image viewer, the stored values stay the IDs.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"a label map must be an HxW integer array, got {ids.dtype} {ids.shape}")
    top = int(ids.max()) if ids.size else 0
    if ids.size and int(ids.min()) < 0:
        raise ValueError("class IDs must be non-negative")
    if top < 256:
        ids8 = np.ascontiguousarray(ids, dtype=np.uint8)
        if palette is None:
            img = Image.fromarray(ids8)
        else:  # build the 'P' image from the raw indices: convert() would re-quantize them
            img = Image.frombytes("P", (ids8.shape[1], ids8.shape[0]), ids8.tobytes())
            img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256].tobytes())
    elif top < 65536:
        if palette is not None:
            raise ValueError("a palette PNG holds at most 256 classes")
        img = Image.fromarray(ids.astype(np.uint16))
    else:
        raise ValueError("class IDs above 65535 cannot be stored in a PNG")
    img.save(path, format="PNG")
