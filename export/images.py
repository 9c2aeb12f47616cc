"""Images for export's checks and accuracy, decoded exactly as training's evaluation decodes them.

Every file goes through the runtime's one decoder with JPEG draft off
(``dga.train.data.images.eval_pixels`` = ``dga.runtime.decode.decode_image(path, S0, draft=False)``):
EXIF orientation, any mode to RGB, shorter side to S0 (bicubic, antialiased), centre crop, uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dga.errors import DataError

FOLDER_LIMIT = 256  # images of a --verify-images folder used by the self-check


def decode_exact(paths, s0: int) -> np.ndarray:
    """uint8 [N, S0, S0, 3] of ``paths`` (a bad file is a DataError naming it)."""
    from dga.train.data.images import eval_pixels

    return np.stack([eval_pixels(str(p), s0) for p in paths])


def folder_images(folder: Path, s0: int, limit: int = FOLDER_LIMIT) -> np.ndarray:
    """The first ``limit`` images of a folder (sorted, recursive) with the deployed preprocessing."""
    from dga.train.data.imagefolder import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--verify-images {folder} is not a folder of images")
    paths = list_images(folder)[:limit]
    if not paths:
        raise DataError(f"--verify-images {folder} holds no images")
    return decode_exact(paths, s0)


def load_folder_images(folder: Path, ckpt: Path) -> np.ndarray:
    """Decode up to 256 images of a folder at the bundle's S0 (uint8 [N, S0, S0, 3]): dga-export --verify-images."""
    from dga.train.bundle import read_manifest

    return folder_images(folder, read_manifest(ckpt)["input"]["s0"])
