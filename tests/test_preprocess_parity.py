"""The eval transform's documented tolerance (docs/preprocessing.md) against resize-then-crop, and the
one decoder: training's evaluation, export's images and dga-infer's exact decode give the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dga.runtime.decode import decode_image, open_image
from dga.runtime.preprocess import crop_box, eval_image, shorter_side_size

# (w, h, size): landscape, portrait (the case where Pillow may order its passes differently), square,
# barely larger, smaller than S0 (upsampled), already S0 on the shorter side.
SIZES = [(640, 480, 192), (480, 640, 192), (300, 1200, 224), (1280, 320, 192), (193, 191, 192), (200, 200, 192),
         (97, 131, 64), (150, 400, 192), (700, 140, 160), (1024, 768, 224), (768, 1024, 224), (192, 300, 192)]


def resize_then_crop(img: Image.Image, size: int) -> np.ndarray:
    """The two-step reference: the whole image resized (bicubic), then torchvision's centre crop."""
    new = shorter_side_size(*img.size, size)
    resized = img if new == img.size else img.resize(new, Image.Resampling.BICUBIC)
    left, top = crop_box(*resized.size, size)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.int16)


def smooth(rng, w: int, h: int) -> Image.Image:  # photo-like: no hard edges
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)


def hard_edged(rng, w: int, h: int) -> Image.Image:  # flat blocks with hard edges, like line art
    cell = int(rng.integers(8, 48))
    blocks = rng.integers(0, 256, (h // cell + 1, w // cell + 1, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((w, h), Image.Resampling.NEAREST)


def _diffs(make) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for w, h, size in SIZES:
        img = make(rng, w, h)
        got = eval_image(img, size).astype(np.int16)
        ref = resize_then_crop(img, size)
        assert got.shape == ref.shape == (size, size, 3)
        out.append(np.abs(got - ref))
    return out


def test_smooth_images_within_two_levels_of_resize_then_crop():
    """Documented: photo-like content, every value within 2 levels, under 5 % of values differ at all."""
    diffs = _diffs(smooth)
    assert max(int(d.max()) for d in diffs) <= 2
    assert sum(int((d > 0).sum()) for d in diffs) / sum(d.size for d in diffs) < 0.05


def test_hard_edges_rarely_more_than_two_levels_off():
    """Documented: hard edges, under 0.5 % of values more than 2 levels off; the mean difference tiny."""
    diffs = _diffs(hard_edged)
    total = sum(d.size for d in diffs)
    assert sum(int((d > 2).sum()) for d in diffs) / total < 0.005
    assert sum(int(d.sum()) for d in diffs) / total < 0.1


def test_square_and_exact_size_images_match_exactly():
    """A square image's box is the whole image and a shorter side of S0 is a plain crop: identical values."""
    rng = np.random.default_rng(1)
    for w, h, size in [(150, 150, 192), (640, 640, 224), (192, 300, 192), (500, 224, 224)]:
        img = hard_edged(rng, w, h)
        np.testing.assert_array_equal(eval_image(img, size), resize_then_crop(img, size).astype(np.uint8))


def test_reference_is_torchvision_resize_and_center_crop():
    """The two-step reference above is what torchvision's Resize(bicubic, antialias) + CenterCrop give."""
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(2)
    for w, h, size in SIZES[:6]:
        img = smooth(rng, w, h)
        tv = transforms.Compose([transforms.Resize(size, transforms.InterpolationMode.BICUBIC, antialias=True),
                                 transforms.CenterCrop(size)])
        np.testing.assert_array_equal(np.asarray(tv(img), dtype=np.int16), resize_then_crop(img, size))


def test_one_decoder_for_training_export_and_runtime(tmp_path: Path):
    """Training's eval transform, export's images and dga-infer --no-draft give identical pixels."""
    pytest.importorskip("torch")
    from dga.export.images import decode_exact
    from dga.train.data.images import ImageListDataset, eval_transform, open_rgb

    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(640, 480), (333, 777), (150, 150)]):
        img = smooth(rng, w, h)
        paths.append(tmp_path / f"{i}.jpg")
        img.save(paths[-1], quality=90, exif=_exif_orientation(6) if i == 1 else b"")
    exact = np.stack([decode_image(p, 96, draft=False) for p in paths])
    np.testing.assert_array_equal(decode_exact(paths, 96), exact)
    ds = ImageListDataset([(str(p), 0) for p in paths], eval_transform(96))
    training = np.stack([(ds[i][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in range(len(ds))])
    np.testing.assert_array_equal(training, exact)
    # training's augmentation gets its PIL image from the same opening code (EXIF applied: 777 x 333)
    assert open_rgb(str(paths[1])).size == open_image(paths[1]).size == (777, 333)


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_parity_measurement_runs_on_a_few_images(tmp_path: Path):
    """bench/preprocess_parity's comparison and summary on a handful of generated files."""
    pytest.importorskip("torchvision")
    from dga.bench.preprocess_parity import COMPARISONS, compare_set, hard_edge_folder

    paths = hard_edge_folder(tmp_path / "h", 3)
    result = compare_set(paths, tmp_path / "h", 64)
    assert set(result) == set(COMPARISONS)
    for s in result.values():
        assert s["images"] == 3 and 0.0 <= s["pct_values_over_2"] <= s["pct_values_over_1"] <= s["pct_values_differing"]
        assert s["worst_image"]["file"].endswith(".png")
    assert result["draft_vs_exact"]["max_abs"] == 0  # PNGs: draft is a JPEG-only shortcut
