"""The GPU JPEG path, run with device="cpu": same code, no GPU needed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dga.runtime.decode import DecodeError, decode_image

torchvision_io = pytest.importorskip("torchvision.io")


def _jpeg(path, w, h, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).save(path, quality=95)
    return path


def test_batch_decoder_matches_cpu_path_and_reports_bad_files(tmp_path):
    from dga.runtime.gpu_decode import JpegBatchDecoder

    good = [_jpeg(tmp_path / f"{i}.jpg", w, h, i) for i, (w, h) in enumerate([(300, 200), (150, 400), (192, 192)])]
    png = tmp_path / "p.png"
    Image.new("RGB", (50, 80), (10, 200, 30)).save(png)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "t.jpg"
    text.write_text("not a jpeg at all")
    paths = [str(p) for p in [*good, png, truncated, text]]
    out = JpegBatchDecoder(192, device="cpu", draft=False).decode(paths)
    for p, res in zip(paths[:3], out[:3], strict=True):
        assert res.shape == (192, 192, 3) and res.dtype == np.uint8
        ref = decode_image(p, 192, draft=False)
        # Another resampler: close to PIL's, not bit-identical.
        assert np.abs(res.astype(int) - ref.astype(int)).mean() < 3.0
    assert np.array_equal(out[3], decode_image(paths[3], 192))  # non-JPEG: the exact CPU path
    assert isinstance(out[4], DecodeError) and out[4].reason in ("truncated", "corrupt")
    assert isinstance(out[5], DecodeError) and out[5].reason == "not-an-image"


def test_resize_crop_geometry():
    import torch

    from dga.runtime.gpu_decode import resize_crop

    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    img[:, :, 100:] = 255  # right half white
    out = resize_crop(img, 50)  # 100x200 -> 50x100, centre crop columns 25..75
    assert out.shape == (50, 50, 3)
    assert out[:, :20].max() == 0 and out[:, 30:].min() == 255


def test_decode_on_device_keeps_every_image_on_the_device(tmp_path):
    import torch

    from dga.runtime.gpu_decode import JpegBatchDecoder

    jpegs = [_jpeg(tmp_path / f"{i}.jpg", w, h, i) for i, (w, h) in enumerate([(300, 200), (96, 96)])]
    png = tmp_path / "p.png"
    Image.new("RGB", (50, 80), (10, 200, 30)).save(png)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg at all")
    paths = [str(p) for p in [*jpegs, png, bad]]
    decoder = JpegBatchDecoder(64, device="cpu", draft=False)
    on_device = decoder.decode_on_device(paths)
    as_numpy = decoder.decode(paths)
    for t, a in zip(on_device[:3], as_numpy[:3], strict=True):
        assert isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == torch.uint8
        assert tuple(t.shape) == (64, 64, 3) and np.array_equal(t.numpy(), a)
    # The PNG went through the exact CPU path and was then moved to the device: a solid colour stays exact.
    assert (on_device[2].numpy() == np.array([10, 200, 30], np.uint8)).all()
    assert isinstance(on_device[3], DecodeError) and on_device[3].reason == "not-an-image"
    stacked = torch.stack(on_device[:3])  # what a torch runner on the device takes
    assert tuple(stacked.shape) == (3, 64, 64, 3)
