"""Images as tensors for training and evaluation.

The eval transform is the runtime's own ``eval_image`` (shorter side to S, centre crop, uint8)
followed by a plain /255: accuracy measured during training is then the accuracy of the deployed
graph, which receives exactly those uint8 pixels. Normalisation by the backbone's mean/std is left
to the model, which is also what the exported graph does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from dga.errors import DataError
from dga.runtime.preprocess import eval_image, to_rgb

Transform = Callable[[Image.Image], torch.Tensor]


def open_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully to an RGB image; any decoding failure is a DataError naming it.

    An image over PIL's ``MAX_IMAGE_PIXELS`` (a decompression bomb, ~89 megapixels) is refused
    before decoding: in a dataset it is a bad file, not something to spend gigabytes on.
    """
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                raise ValueError(f"{img.width}x{img.height} pixels is over the limit of {limit}")
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # (the warning class too: under ``-W error`` PIL's own bomb warning arrives as an exception)
        raise DataError(f"cannot decode image {path} ({e}); replace or remove the file.") from e


class EvalTransform:
    """PIL image -> float tensor [3, S, S] in [0, 1] via the runtime's ``eval_image``.

    A class rather than a closure so that DataLoader workers can pickle it.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.array(eval_image(img, self.size), dtype=np.uint8, copy=True)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"


def eval_transform(size: int) -> Transform:
    return EvalTransform(size)


def train_transform(size: int, min_scale: float = 0.08) -> Transform:
    """CoOp's augmentation: RandomResizedCrop (scale (min_scale, 1), default ratio, bicubic) + flip.

    torchvision's default min_scale 0.08 suits photos; for small whole-object images (the embedded
    benchmark) crops that small cut the object away and its label with it, hence the option.
    """
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """(path, label) items -> (float tensor [3, S, S] in [0, 1], label)."""

    def __init__(self, items: Sequence[tuple[str, int]], transform: Transform) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(open_rgb(path)), label
