"""Optional GPU JPEG decoding (nvJPEG through torchvision) for hosts where CPU decoding starves the engine.

JPEGs of a batch are decoded together on the GPU, resized (shorter side to S0, bicubic with
antialiasing) and centre-cropped there; every other file, and any JPEG the GPU decoder rejects,
goes through the exact CPU path (``decode.decode_image``), which also names what is wrong with a
bad file. Pixels differ slightly from the CPU path (another IDCT and resampler), so this is
opt-in (``dga-infer --gpu-decode``). torch/torchvision are imported only when it is used.
The same code runs with ``device="cpu"`` (that is how it is tested without a GPU).

``decode`` hands back numpy arrays, what the input pipeline stacks for every runner; a caller that
feeds a torch runner on the same GPU (the torch-cuda backend takes device tensors) uses
``decode_on_device`` and keeps the pixels there, with no copy to the host and back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dga.runtime.decode import DecodeError, decode_image
from dga.runtime.listing import SNIFF_BYTES, sniff_bytes


def gpu_decode_available() -> bool:
    try:
        import torch
        import torchvision.io  # noqa: F401

        return torch.cuda.is_available()
    except ImportError:
        return False


def resize_crop(img, size: int):
    """uint8 [3, H, W] tensor -> uint8 [size, size, 3]: shorter side to size, centre crop."""
    import torch
    from torch.nn import functional as F

    _, h, w = img.shape
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = F.interpolate(img.unsqueeze(0).float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[0, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0)


class JpegBatchDecoder:
    """Decode a list of paths: JPEGs on ``device`` in one call, the rest (and failures) on the CPU."""

    def __init__(self, size: int, device: str = "cuda", draft: bool = True):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self.torch, self.decode_jpeg, self.mode = torch, decode_jpeg, ImageReadMode.RGB
        self.size, self.device, self.draft = size, device, draft

    def _cpu(self, path: str) -> np.ndarray | DecodeError:
        try:
            return decode_image(path, self.size, draft=self.draft)
        except DecodeError as exc:
            return exc

    def _gpu_one(self, data):
        out = self.decode_jpeg(data, mode=self.mode, device=self.device, apply_exif_orientation=True)
        return resize_crop(out, self.size)

    def decode(self, paths: Sequence[str]) -> list[np.ndarray | DecodeError]:
        """One uint8 [S0, S0, 3] numpy array (or the DecodeError) per path, in order."""
        return [r.cpu().numpy() if isinstance(r, self.torch.Tensor) else r for r in self._decode(paths)]

    def decode_on_device(self, paths: Sequence[str]) -> list:
        """One uint8 [S0, S0, 3] tensor on ``device`` (or the DecodeError) per path, in order; files the
        CPU path decodes are moved to the device, so every result lives in one place."""
        return [self.torch.from_numpy(r).to(self.device) if isinstance(r, np.ndarray) else r
                for r in self._decode(paths)]

    def _decode(self, paths: Sequence[str]) -> list:
        """Per path: a tensor on the device (decoded there), a numpy array (the CPU path) or a DecodeError."""
        results: list = [None] * len(paths)
        jpeg_idx, jpeg_data = [], []
        for i, path in enumerate(paths):
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
            except OSError:
                results[i] = self._cpu(path)  # the CPU path names the problem
                continue
            if raw and sniff_bytes(raw[:SNIFF_BYTES]) == "jpeg" and os.path.getsize(path) == len(raw):
                jpeg_idx.append(i)
                jpeg_data.append(self.torch.frombuffer(bytearray(raw), dtype=self.torch.uint8))
            else:
                results[i] = self._cpu(path)
        if jpeg_data:
            try:
                decoded = self.decode_jpeg(jpeg_data, mode=self.mode, device=self.device, apply_exif_orientation=True)
                for i, img in zip(jpeg_idx, decoded, strict=True):
                    results[i] = resize_crop(img, self.size)
            except RuntimeError:
                for i, data in zip(jpeg_idx, jpeg_data, strict=True):  # one bad JPEG: go file by file
                    try:
                        results[i] = self._gpu_one(data)
                    except RuntimeError:
                        results[i] = self._cpu(paths[i])
        return results
