"""Which files under an input path are images: a stable, recursive, content-aware listing.

``list_inputs(root)`` returns candidate image files sorted by their path relative to ``root``
(POSIX form, code-point order), so two runs over the same tree see the same order and a resumed
run can skip what an earlier one finished. A file is a candidate when its extension is an image
extension *or* its first bytes carry an image signature (``sniff``): content decides, so a JPEG
named ``photo.txt`` is listed, while ``labels.csv`` or ``README`` are skipped silently. Listing
never decodes; a candidate that later fails to decode is reported by the decoder, not here.

Rules:

* Hidden entries (name starting with ``.``, which includes macOS ``._*`` resource forks) are
  skipped, files and folders alike; the root itself may be hidden.
* Symlinked folders are followed, but each real folder (device, inode) is entered once, so a link
  loop or two links to one folder cannot list a file twice or recurse forever. Symlinked files are
  listed under their own (link) path.
* Only regular files are sniffed (opening a FIFO would block). A dangling symlink, or a file that
  cannot be read, is listed if its extension is an image extension (the decoder then reports it
  as ``unreadable``) and skipped otherwise, since nothing says it is an image.
* A sub-folder that cannot be read is skipped and passed to ``on_error`` when given; a root that
  does not exist or cannot be read raises ``InputError``. A root that is a file lists just itself.

Standard library only: this module ships with the runtime.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from dga.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SNIFF_BYTES = 32
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff_bytes(head: bytes) -> str | None:
    """The image format named by the first bytes of a file, or None when no signature matches.

    Returns one of ``jpeg png gif bmp webp tiff``. BMP's two-byte ``BM`` is weak on its own, so
    the DIB header size that follows the 14-byte file header must also be a known one.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    return None


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The image format of ``path`` from its magic bytes, or None (also when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None
    return sniff_bytes(head)


def has_image_extension(path: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _is_candidate(path: Path) -> bool:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:
        # Dangling link or a file we may not even stat: the name is all we have.
        return has_image_extension(path)
    if not stat.S_ISREG(st.st_mode):
        return False  # FIFO, socket, device: never opened
    if has_image_extension(path):
        return True
    return sniff(path) is not None


def list_inputs(
    root: str | os.PathLike[str],
    on_error: Callable[[Path, OSError], None] | None = None,
) -> list[Path]:
    """Candidate image files under ``root`` (or ``[root]`` for a file), sorted by relative path.

    Paths are ``root / relative`` (not resolved), so they read like the argument the user gave.
    ``on_error(folder, exc)`` is told about sub-folders that could not be read.
    """
    root = Path(root)
    if not os.path.exists(root):
        raise InputError(f"Input path {root} does not exist; pass an image file or a folder of images.")
    if not root.is_dir():
        return [root]

    found: list[tuple[str, Path]] = []
    try:
        root_st = os.stat(root)
    except OSError as exc:
        raise InputError(f"Input folder {root} cannot be read ({exc.strerror or exc}).") from exc
    seen = {(root_st.st_dev, root_st.st_ino)}
    stack: list[tuple[Path, str]] = [(root, "")]
    first = True
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if first:
                raise InputError(f"Input folder {root} cannot be read ({exc.strerror or exc}).") from exc
            if on_error is not None:
                on_error(folder, exc)
            continue
        first = False
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    st = entry.stat()
                except OSError as exc:
                    if on_error is not None:
                        on_error(path, exc)
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue  # a link loop or a second link to a folder already listed
                seen.add(key)
                subdirs.append((path, rel_path))
            elif _is_candidate(path):
                found.append((rel_path, path))
        # Depth-first in name order (deterministic choice of which link to a folder wins).
        stack.extend(reversed(subdirs))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]
