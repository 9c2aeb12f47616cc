"""Which files under an input path are images: a stable, recursive, content-aware listing.

``scan_inputs(root)`` walks ``root`` once and returns a ``Listing``: the candidate image files
sorted by their path relative to ``root`` (POSIX form, code-point order), so two runs over the same
tree see the same order and a resumed run can skip what an earlier one finished, and every other
file, each with why it was skipped, in the same order. ``list_inputs(root)`` is its ``files``.
Listing never decodes pixels; a candidate that later fails to decode is reported by the decoder.

A file is a candidate when Pillow can identify it:

* its extension is one Pillow registers for a format it can decode here (``image_extensions``:
  ``.jpg``, ``.png``, ``.tga``, ``.dds``, ``.avif``, ``.psd``, ``.ico``, ``.jp2``, ``.qoi``, ...;
  formats Pillow only identifies, such as HDF5 or GRIB without a handler, EPS without Ghostscript or
  MPEG, do not count), or
* its first bytes carry the signature of JPEG, PNG, GIF, BMP, WebP or TIFF (``sniff_bytes``), or
* a decodable Pillow plugin's own signature test accepts its first 16 bytes and that plugin then
  reads its header (``decode.identifies``; some tests are loose: XBM accepts any text that starts
  with ``#define``).

Content decides, so a JPEG named ``photo.txt`` is listed, and a file with an image extension is
listed whatever it holds (the decoder then says ``not-an-image``, ``corrupt``, ...).

Rules:

* Hidden entries (name starting with ``.``, which includes ``.DS_Store`` and macOS ``._*``
  resource forks) are skipped silently, files and folders alike; the root itself may be hidden.
* Every other file that is not a candidate is a ``SkippedFile`` (path and why): no image extension
  or signature, a format Pillow cannot decode here, a FIFO, socket or device (never opened: that
  could block), a dangling symlink or an unreadable file without an image extension (nothing says
  it is an image). A dangling link or unreadable file *with* an image extension is a candidate,
  and the decoder reports it as ``unreadable``.
* Symlinked folders are followed, but each real folder (device, inode) is entered once, so a link
  loop or two links to one folder cannot list a file twice or recurse forever. Symlinked files are
  listed under their own (link) path.
* A sub-folder that cannot be read is a ``SkippedFile`` too (its files are unknown), and is passed
  to ``on_error`` when given; a root that does not exist or cannot be read raises ``InputError``.
  A root that is a file lists just itself, whatever it is: a file named explicitly always gets a
  prediction or an error.

Pillow is imported on first use only: what it can decode is asked of it, never hard-coded.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dga.errors import InputError

SNIFF_BYTES = 32
PLUGIN_PREFIX_BYTES = 16  # what Image.open hands each plugin's signature test
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class SkippedFile:
    """A file of the walk that is not an image candidate, and why (one short phrase)."""

    path: Path
    why: str

    def line(self) -> str:
        """``skipped: <path> (<why>)`` on one line; a path with control characters or bytes that are
        not UTF-8 is shown as a JSON string (ASCII, escaped), so every skipped file is one line."""
        text = os.fspath(self.path)
        printable = text.isprintable() and not any("\udc80" <= c <= "\udcff" for c in text)
        return f"skipped: {text if printable else json.dumps(text)} ({self.why})"


@dataclass
class Listing:
    """What ``scan_inputs`` found: candidates and skipped files, each sorted by relative path."""

    files: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def _decodable_formats() -> dict[str, Callable[[bytes], object] | None]:
    """Pillow's formats that it can decode here -> their signature test (None: the plugin has none)."""
    from PIL import EpsImagePlugin, Image, ImageFile

    from dga.runtime.decode import IDENTIFY_ONLY_FORMATS

    Image.init()
    formats = {}
    for fmt, (factory, accept) in Image.OPEN.items():
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile) and factory._handler is None:
            continue  # identified, but decoding needs a handler nobody registered
        if fmt in IDENTIFY_ONLY_FORMATS:
            continue  # Pillow reads the header, never the pixels
        if factory is EpsImagePlugin.EpsImageFile and not EpsImagePlugin.has_ghostscript():
            continue
        formats[fmt] = accept
    if "JPEG" in formats:
        formats["MPO"] = None  # opened by the JPEG plugin
    return formats


def image_extensions() -> dict[str, str]:
    """Lower-case extension -> Pillow format, for the formats Pillow can decode here."""
    from PIL import Image

    decodable = _decodable_formats()
    Image.init()
    return {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in decodable}


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
    """Whether the extension of ``path`` is one of a format Pillow can decode here."""
    return os.path.splitext(os.fspath(path))[1].lower() in image_extensions()


class _Judge:
    """Decides candidate or skipped for one file, with Pillow's facts looked up once per walk."""

    def __init__(self) -> None:
        self.decodable = _decodable_formats()
        self.extensions = image_extensions()
        from PIL import Image

        self.all_extensions = {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items()}
        self.signature_tests = [(fmt, accept) for fmt, accept in self.decodable.items() if accept is not None]

    def why_not(self, path: Path) -> str | None:
        """None for a candidate, else why the file is skipped."""
        ext = os.path.splitext(path.name)[1].lower()
        known = ext in self.extensions
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as exc:
            # Dangling link or a file we may not even stat: the name is all we have.
            if known:
                return None
            return "dangling link" if os.path.islink(path) else f"cannot be read ({exc.strerror or exc})"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"  # FIFO, socket, device: never opened
        if known:
            return None
        try:
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc}) and has no image extension"
        if sniff_bytes(head) is not None:
            return None
        from dga.runtime.decode import identifies

        for fmt, accept in self.signature_tests:
            try:
                hit = accept(head[:PLUGIN_PREFIX_BYTES]) is True  # a str means "recognised, cannot open"
            except Exception:
                hit = False
            if hit and identifies(path, fmt):
                return None
        if ext in self.all_extensions:
            return f"{self.all_extensions[ext]} file, which Pillow cannot decode here"
        return "not an image (no image extension or signature)"


def scan_inputs(
    root: str | os.PathLike[str],
    on_error: Callable[[Path, OSError], None] | None = None,
) -> Listing:
    """Candidate image files under ``root`` (or ``[root]`` for a file) and the files skipped.

    Paths are ``root / relative`` (not resolved), so they read like the argument the user gave.
    ``on_error(folder, exc)`` is told about sub-folders that could not be read.
    """
    root = Path(root)
    if not os.path.exists(root):
        raise InputError(f"Input path {root} does not exist; pass an image file or a folder of images.")
    if not root.is_dir():
        return Listing([root])

    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, SkippedFile]] = []
    try:
        root_st = os.stat(root)
    except OSError as exc:
        raise InputError(f"Input folder {root} cannot be read ({exc.strerror or exc}).") from exc
    judge = _Judge()
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
            skipped.append((rel, SkippedFile(folder, f"folder cannot be read ({exc.strerror or exc})")))
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
                    skipped.append((rel_path, SkippedFile(path, f"folder cannot be read ({exc.strerror or exc})")))
                    if on_error is not None:
                        on_error(path, exc)
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue  # a link loop or a second link to a folder already listed
                seen.add(key)
                subdirs.append((path, rel_path))
                continue
            why = judge.why_not(path)
            if why is None:
                found.append((rel_path, path))
            else:
                skipped.append((rel_path, SkippedFile(path, why)))
        # Depth-first in name order (deterministic choice of which link to a folder wins).
        stack.extend(reversed(subdirs))
    found.sort(key=lambda item: item[0])
    skipped.sort(key=lambda item: item[0])
    return Listing([path for _, path in found], [s for _, s in skipped])


def list_inputs(
    root: str | os.PathLike[str],
    on_error: Callable[[Path, OSError], None] | None = None,
) -> list[Path]:
    """The candidate image files of ``scan_inputs(root, on_error)``, sorted by relative path."""
    return scan_inputs(root, on_error).files
