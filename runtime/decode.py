"""Open one image file (or bytes) and turn it into the model's input, or say in one word why not.

This is the project's only image decoder. ``open_image(path)`` returns the whole image as an RGB
PIL image: the pixel-count (decompression-bomb) check, strict truncation, EXIF orientation and
the conversion of every mode to RGB (``preprocess.to_rgb``) all happen here. ``decode_image(path,
size)`` is ``open_image`` followed by the one eval transform (``preprocess.resize_crop``: shorter
side to ``size``, centre crop) and returns uint8 ``[size, size, 3]``. dga-infer and the Predictor
call ``decode_image`` (JPEG draft on by default); training's evaluation, dga-eval and export's
checks call it with ``draft=False``; training's augmentation takes its PIL image from
``open_image``. Anything that goes wrong raises ``DecodeError`` with a stable ``reason`` code
(``REASONS``) and a one-sentence message; the runtime writes both to ``errors.jsonl`` and goes on
with the next file, training turns it into a ``DataError`` naming the file.

Decisions:

* **JPEG draft.** With ``draft=True`` a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale
  (``Image.draft``) when the image is at least twice the needed size. The requested size is what
  the shorter side must reach (``size``); PIL picks the largest scale whose result is still at
  least that big, so the bicubic resize that follows still down-samples. This is much faster on
  large photos but changes pixels (DCT-domain scaling instead of a full decode, and the scaled
  size is rounded up, shifting the crop by up to a pixel): on mixed-size JPEGs the mean difference
  is 1.4 levels, 16 % of values differ by more than 2 and edges by up to 124
  (docs/preprocessing.md). ``draft=False`` gives exactly ``eval_image(to_rgb(Image.open(path)),
  size)``, the pixels of training's evaluation.
* **Decompression bombs.** ``width * height`` is checked against ``max_pixels`` right after the
  header is read, before any pixel is decoded. PIL's own check (``Image.MAX_IMAGE_PIXELS``) also
  runs inside ``Image.open``: its ``DecompressionBombError`` maps to ``too-large``, its
  ``DecompressionBombWarning`` is dropped (our own check, which follows at once, decides).
  ``max_pixels`` can therefore tighten PIL's limit freely but loosen it only up to PIL's hard error
  at twice ``Image.MAX_IMAGE_PIXELS``; raise that global for more.
* **Pillow's warnings belong to the file.** While a thread decodes (or identifies) a file, every
  warning Pillow raises on that thread ("Corrupt EXIF data", "Image appears to be a malformed MPO
  file", ...) is collected for that file, one whitespace-normalised line each, instead of going
  through Python's warning filters: ``record_warnings=[]`` receives them (dga-infer writes them to
  the file's row); without it they are issued again as ordinary warnings when the decode ends.
  ``warnings.catch_warnings`` cannot do this: it edits process-wide state and is not thread-safe.
  So on first use ``warnings.warn`` is wrapped, once per process, by a function that hands a
  warning to the calling thread's collector when it has one and to the original ``warnings.warn``
  otherwise (deprecation warnings always go to the original): other threads and other code see
  Python's warnings exactly as before. Warnings raised in C through ``PyErr_WarnEx`` bypass the
  wrapper; Pillow raises none while decoding.
* **Truncated files.** ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a PIL global. When it is False (the
  default) we leave it alone and a truncated file raises, which we report as ``truncated``. If
  other code in the process has set it True, each of our decodes sets it back to False for its
  duration and the last one to finish restores the True (reference-counted under a lock), so we
  never silently accept half an image and never change the setting for good. Another thread that
  is decoding at the same time without our module sees False during that window.
* **Reading.** A path is opened once and handed to PIL as a file object; an ``OSError`` with an
  ``errno`` (permission, I/O error) is ``unreadable``, PIL's own ``OSError`` s carry no errno.
  A signature PIL then fails to identify (e.g. a PNG whose header CRC is wrong) is ``corrupt``,
  not ``not-an-image``: content decides, as in ``listing``. A format Pillow identifies but has no
  decoder for here (MPEG, an EPS without Ghostscript, a stub format such as HDF5 without its
  handler) is ``unsupported``.
* **Unexpected failures.** Every exception Pillow raises while opening, loading, orienting,
  converting or resizing one file becomes that file's ``DecodeError`` (``corrupt`` unless a more
  precise reason applies, the exception's type and text in the message), so one odd file never
  stops a run; an exception elsewhere is a bug and propagates.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from dga.errors import DgaError
from dga.runtime.listing import SNIFF_BYTES, sniff_bytes
from dga.runtime.preprocess import resize_crop, shorter_side_size, to_rgb

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default MAX_IMAGE_PIXELS (about 0.25 GiB of RGBA)

REASONS = ("empty", "unreadable", "not-an-image", "too-large", "truncated", "unsupported", "corrupt")
DRAFT_FORMATS = ("JPEG", "MPO")
IDENTIFY_ONLY_FORMATS = ("MPEG",)  # Pillow reads their header but has no decoder for their pixels

# Pillow says "image file is truncated" (or "Truncated File Read", "truncated PNG file") when the
# data runs out. Its "broken data stream" is the codec rejecting bytes that are there (garbage in a
# GIF's LZW or a PNG's zlib stream), so that one is ``corrupt``, not ``truncated``.
_TRUNCATION_MARKERS = (
    "truncated",
    "unexpected end",
    "end of file",
    "image was incomplete",
    "not enough image data",
    "buffer is not large enough",
)

_UNSUPPORTED_MARKERS = (
    "unsupported",
    "not supported",
    "not available",  # "decoder xyz not available" (a Pillow build without that codec)
    "cannot find loader",  # a stub format (HDF5, GRIB, BUFR, WMF) without its handler
    "ghostscript",  # EPS / PostScript need the Ghostscript program
    "unknown pixel mode",
    "unknown raw mode",
    "unrecognized mode",
)


class DecodeError(DgaError):
    """One input could not be decoded; ``reason`` is one of ``REASONS``, the message one sentence."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # picklable across process pools
        return (type(self), (self.reason, self.message))


# --- process-wide PIL state -------------------------------------------------------------------

_TRUNC_LOCK = threading.Lock()
_trunc_forcing = 0
_trunc_saved = False

# --- Pillow's warnings, collected per file (see the module docstring) -------------------------

_collector = threading.local()  # .notes: the list the current thread's decode collects into
_HOOK_LOCK = threading.Lock()
_original_warn: Callable[..., Any] | None = None
_FORWARDED = (DeprecationWarning, PendingDeprecationWarning)  # about our code, not about a file


def _routed_warn(message: Any, category: type[Warning] | None = None, stacklevel: int = 1,
                 source: Any = None, **kwargs: Any) -> None:
    """``warnings.warn`` as installed: to the calling thread's collector when it is decoding."""
    notes = getattr(_collector, "notes", None)
    kind = type(message) if isinstance(message, Warning) else (category or UserWarning)
    if notes is None or issubclass(kind, _FORWARDED):
        assert _original_warn is not None
        _original_warn(message, category, stacklevel + 1, source, **kwargs)  # attributed to our caller
        return
    if issubclass(kind, Image.DecompressionBombWarning):
        return  # the pixel-count check right after the header decides
    text = " ".join(str(message).split())
    if (kind, text) not in notes:  # the same warning twice in one file is one note
        notes.append((kind, text))


def _install_warning_hook() -> None:
    global _original_warn
    if _original_warn is None:
        with _HOOK_LOCK:
            if _original_warn is None:
                _original_warn = warnings.warn
                warnings.warn = _routed_warn


@contextmanager
def _collecting_warnings(record: list[str] | None) -> Iterator[None]:
    """Collect the warnings this thread raises meanwhile: into ``record``, or re-issued at the end."""
    _install_warning_hook()
    notes: list[tuple[type[Warning], str]] = []
    outer = getattr(_collector, "notes", None)
    _collector.notes = notes
    try:
        yield
    finally:
        _collector.notes = outer
        if record is not None:
            record.extend(text for _, text in notes)
        else:
            for kind, text in notes:
                warnings.warn(text, kind, stacklevel=4)  # attributed to the caller of open_image & co.


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Keep ``ImageFile.LOAD_TRUNCATED_IMAGES`` False while we decode (see module docstring)."""
    global _trunc_forcing, _trunc_saved
    with _TRUNC_LOCK:
        if _trunc_forcing:
            _trunc_forcing += 1
            forced = True
        elif ImageFile.LOAD_TRUNCATED_IMAGES:
            _trunc_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            _trunc_forcing = 1
            forced = True
        else:
            forced = False
    try:
        yield
    finally:
        if forced:
            with _TRUNC_LOCK:
                _trunc_forcing -= 1
                if _trunc_forcing == 0:
                    ImageFile.LOAD_TRUNCATED_IMAGES = _trunc_saved


def _resolve_max_pixels(max_pixels: int | None) -> int:
    if max_pixels is None:
        return int(Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)
    return int(max_pixels)


def draft_request(width: int, height: int, size: int) -> tuple[int, int]:
    """The (w, h) to pass to ``Image.draft``: the size after resizing the shorter side to ``size``.

    PIL's JPEG draft picks scale ``s`` in 8/4/2/1 with ``s <= min(w // req_w, h // req_h)``, so the
    decoded shorter side stays >= ``size`` and the bicubic resize afterwards only down-samples.
    """
    return shorter_side_size(width, height, size)


# --- decoding -----------------------------------------------------------------------------------


def _classify_load_error(exc: BaseException, what: str) -> DecodeError:
    if isinstance(exc, DecodeError):
        return exc
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return DecodeError(
            "too-large",
            f"{what} is over Pillow's decompression-bomb pixel limit (Image.MAX_IMAGE_PIXELS); "
            "raise that limit if the image is genuine.",
        )
    if isinstance(exc, MemoryError):
        return DecodeError("too-large", f"{what} needs more memory to decode than is available.")
    if isinstance(exc, OSError) and exc.errno is not None:
        return DecodeError("unreadable", f"{what} could not be read ({exc.strerror or exc}).")
    text = str(exc).lower()
    if isinstance(exc, ValueError) and "decompressed data too large" in text:
        return DecodeError("too-large", f"{what} holds a metadata chunk too large to decompress safely.")
    if isinstance(exc, NotImplementedError) or any(m in text for m in _UNSUPPORTED_MARKERS):
        return DecodeError("unsupported", f"{what} uses a variant of its format Pillow cannot decode ({exc}).")
    if isinstance(exc, EOFError) or any(m in text for m in _TRUNCATION_MARKERS):
        return DecodeError("truncated", f"{what} is truncated: the file ends before its image data does.")
    return DecodeError("corrupt", f"{what} is corrupt and could not be decoded ({type(exc).__name__}: {exc}).")


def _cut_short(fp: IO[bytes]) -> bool:
    """A file shorter than its own header says, where the codec reports that only as damage.

    RIFF (WebP): the declared RIFF size runs past the end (libwebp just fails). TIFF: the first
    directory's offset lies past the end; libtiff writes that directory after the image data, so
    cutting such a file loses it and Pillow sees a damaged header.
    """
    try:
        fp.seek(0)
        head = fp.read(12)
        actual = fp.seek(0, io.SEEK_END)
    except (OSError, ValueError):
        return False
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 > actual
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return int.from_bytes(head[4:8], "little" if head[0:1] == b"I" else "big") + 2 > actual
    return False


def _explain_unidentified(fp: IO[bytes], kind: str, what: str) -> DecodeError:
    """The content has an image signature yet ``Image.open`` gave up: ask that format's plugin why.

    ``Image.open`` swallows each plugin's reason; re-running the one plugin the signature names
    tells an unsupported variant (e.g. "unknown pixel mode") from a damaged or truncated header.
    """
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    plugins = {
        "jpeg": JpegImagePlugin.JpegImageFile,
        "png": PngImagePlugin.PngImageFile,
        "gif": GifImagePlugin.GifImageFile,
        "bmp": BmpImagePlugin.BmpImageFile,
        "tiff": TiffImagePlugin.TiffImageFile,
    }
    damaged = DecodeError("corrupt", f"{what} starts like a {kind.upper()} file but its header is damaged.")
    plugin = plugins.get(kind)
    if plugin is None:
        return damaged
    try:
        fp.seek(0)
        plugin(fp).close()
    except Exception as exc:
        found = _classify_load_error(exc, what)
        if found.reason in ("unsupported", "truncated", "too-large"):
            return found
    return damaged


def _open_header(fp: IO[bytes], size: int, draft: bool, max_pixels: int, what: str) -> Image.Image:
    """Read the header, check the pixel count, set up JPEG draft."""
    try:
        head = fp.read(SNIFF_BYTES)
        fp.seek(0)
    except OSError as exc:
        raise _classify_load_error(exc, what) from exc
    try:
        img = Image.open(fp)
    except UnidentifiedImageError as exc:
        kind = sniff_bytes(head)
        if kind is None:
            raise DecodeError("not-an-image", f"{what} is not an image file Pillow recognises.") from exc
        raise _explain_unidentified(fp, kind, what) from exc
    except Exception as exc:  # any header failure is classified, never raised raw
        raise _classify_load_error(exc, what) from exc
    if img.format in IDENTIFY_ONLY_FORMATS:
        raise DecodeError("unsupported", f"{what} is an {img.format} file, which Pillow identifies but cannot decode.")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt", f"{what} declares an empty {width} x {height} image.")
    if width * height > max_pixels:
        raise DecodeError(
            "too-large",
            f"{what} is {width} x {height} pixels, over the limit of {max_pixels} "
            "(a possible decompression bomb); raise max_pixels if the image is genuine.",
        )
    if draft and img.format in DRAFT_FORMATS:
        try:
            img.draft("RGB", draft_request(width, height, size))
        except Exception as exc:
            raise _classify_load_error(exc, what) from exc
    return img


def _open_stream(fp: IO[bytes], draft_size: int | None, max_pixels: int | None, what: str) -> Image.Image:
    """Header, pixel-count check, optional JPEG draft, full decode, EXIF orientation, RGB.

    Runs inside ``_collecting_warnings`` (the caller's), so Pillow's warnings go to the file.
    """
    if draft_size is not None and draft_size <= 0:
        raise ValueError(f"size must be positive, got {draft_size}")
    try:
        return _open_checked(fp, draft_size, _resolve_max_pixels(max_pixels), what)
    except DecodeError as err:
        if err.reason == "corrupt" and _cut_short(fp):
            raise DecodeError("truncated", f"{what} is truncated: the file ends before its image data does.") from err
        raise


def _open_checked(fp: IO[bytes], draft_size: int | None, limit: int, what: str) -> Image.Image:
    img = _open_header(fp, draft_size or 0, draft_size is not None, limit, what)
    try:
        with _strict_truncation():
            img.load()
    except Exception as exc:
        raise _classify_load_error(exc, what) from exc
    try:
        return to_rgb(img, in_place=True)  # our own image: no copy
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise DecodeError(
            "unsupported", f"{what} has pixel mode {img.mode!r}, which cannot be converted to RGB ({exc})."
        ) from exc
    except Exception as exc:  # e.g. damaged EXIF
        raise _classify_load_error(exc, what) from exc


def _eval_pixels(rgb: Image.Image, size: int, what: str) -> np.ndarray:
    try:
        out = resize_crop(rgb, size)
    except Exception as exc:  # MemoryError is too-large; anything else names the exception
        raise _classify_load_error(exc, what) from exc
    if out.shape != (size, size, 3) or out.dtype != np.uint8:  # pragma: no cover - defensive
        raise DecodeError("unsupported", f"{what} decoded to an unexpected shape {out.shape}.")
    return out


def _open_path(path: str | os.PathLike[str], what: str) -> IO[bytes]:
    """The file opened for reading, after the checks that name what is wrong with a path."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DecodeError("unreadable", f"{what} does not exist (or is a dangling link).") from exc
    except OSError as exc:
        raise DecodeError("unreadable", f"{what} could not be read ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError("unreadable", f"{what} is a directory, not an image file.")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError("unreadable", f"{what} is not a regular file.")
    if st.st_size == 0:
        raise DecodeError("empty", f"{what} is empty (zero bytes).")
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise DecodeError("unreadable", f"{what} could not be read ({exc.strerror or exc}).") from exc


def _open_file(path: str | os.PathLike[str], max_pixels: int | None, draft_size: int | None) -> Image.Image:
    what = os.fspath(path)
    with _open_path(path, what) as fp:
        return _open_stream(fp, draft_size, max_pixels, what)


def open_image(
    path: str | os.PathLike[str],
    max_pixels: int | None = None,
    draft_size: int | None = None,
    record_warnings: list[str] | None = None,
) -> Image.Image:
    """Open and fully decode ``path`` to an RGB PIL image, or raise ``DecodeError``.

    The one place an image file is opened: the pixel-count (decompression-bomb) check, strict
    truncation, EXIF orientation and the conversion of every mode to RGB happen here, for the
    runtime, the training data and export's checks alike. ``draft_size`` (None: exact decode)
    lets a JPEG decode at 1/2, 1/4 or 1/8 scale while its shorter side stays >= ``draft_size``.
    ``max_pixels`` as in ``decode_image``. ``record_warnings``: a list that receives Pillow's
    warnings about this file (also when the decode then fails) instead of Python's warnings.
    """
    with _collecting_warnings(record_warnings):
        return _open_file(path, max_pixels, draft_size)


def open_image_bytes(
    data: bytes,
    max_pixels: int | None = None,
    draft_size: int | None = None,
    name: str = "the image data",
    record_warnings: list[str] | None = None,
) -> Image.Image:
    """``open_image`` for an in-memory file; ``name`` is what messages call it."""
    if not data:
        raise DecodeError("empty", f"{name} is empty (zero bytes).")
    with _collecting_warnings(record_warnings):
        return _open_stream(io.BytesIO(data), draft_size, max_pixels, name)


def decode_image(
    path: str | os.PathLike[str],
    size: int,
    draft: bool = True,
    max_pixels: int | None = None,
    record_warnings: list[str] | None = None,
) -> np.ndarray:
    """Decode ``path`` to uint8 ``[size, size, 3]`` RGB, or raise ``DecodeError``.

    ``open_image`` then the eval transform (``preprocess.resize_crop``). ``draft=False`` is the
    exact decode training's evaluation and export's checks use. ``max_pixels`` defaults (None) to
    ``Image.MAX_IMAGE_PIXELS`` at call time, or 89,478,485 when that global is None.
    ``record_warnings`` as in ``open_image``.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    with _collecting_warnings(record_warnings):
        return _eval_pixels(_open_file(path, max_pixels, size if draft else None), size, os.fspath(path))


def decode_bytes(
    data: bytes,
    size: int,
    draft: bool = True,
    max_pixels: int | None = None,
    name: str = "the image data",
    record_warnings: list[str] | None = None,
) -> np.ndarray:
    """``decode_image`` for an in-memory file; ``name`` is what messages call it."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not data:
        raise DecodeError("empty", f"{name} is empty (zero bytes).")
    with _collecting_warnings(record_warnings):
        rgb = _open_stream(io.BytesIO(data), size if draft else None, max_pixels, name)
        return _eval_pixels(rgb, size, name)


def identifies(path: str | os.PathLike[str], fmt: str) -> bool:
    """Whether Pillow's ``fmt`` plugin accepts the header of ``path`` (no pixel is decoded).

    ``listing`` asks this of a file without an image extension whose first bytes a plugin's loose
    signature test accepted (XBM takes any text starting ``#define``). A header too large to
    decode is still an image. Pillow's warnings about the file are dropped.
    """
    try:
        with _collecting_warnings([]), Image.open(path, formats=[fmt]):
            return True
    except Image.DecompressionBombError:
        return True
    except Exception:  # unidentified, unreadable, or a plugin failing on foreign bytes
        return False
