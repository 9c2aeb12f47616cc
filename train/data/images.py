"""Images as tensors for training and evaluation, decoded by the runtime's one decoder.

Every image is opened by ``dga.runtime.decode`` (pixel-count limit, strict truncation, EXIF
orientation, any mode to RGB). The eval transform is the runtime's own: ``decode_image(path, S,
draft=False)`` (shorter side to S, centre crop, uint8, exact decode) followed by a plain /255, so
accuracy measured during training is the accuracy of the deployed graph, which receives exactly
those uint8 pixels. Training's augmentation (``train_transform``) works on the PIL image
``open_rgb`` returns, from the same opening code. Normalisation by the backbone's mean/std is left
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
from dga.runtime.decode import DecodeError, decode_image, open_image
from dga.runtime.preprocess import eval_image

Transform = Callable[[Image.Image], torch.Tensor]


def _data_error(err: DecodeError) -> DataError:
    return DataError(f"cannot decode image ({err.reason}): {err.message} Replace or remove the file.")


def open_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully to an RGB image (``runtime.decode.open_image``); failures are a DataError.

    An image over PIL's ``MAX_IMAGE_PIXELS`` (a decompression bomb, ~89 megapixels) is refused
    before decoding: in a dataset it is a bad file, not something to spend gigabytes on.
    """
    try:
        return open_image(path)
    except DecodeError as err:
        raise _data_error(err) from err


def eval_pixels(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the file through the runtime's decoder and eval transform, exact (no draft)."""
    try:
        return decode_image(path, size, draft=False)
    except DecodeError as err:
        raise _data_error(err) from err


class EvalTransform:
    """Image -> float tensor [3, S, S] in [0, 1] via the runtime's eval transform.

    ``from_path`` (what ``ImageListDataset`` calls) decodes a file with ``eval_pixels``; calling
    the transform on a PIL image applies ``eval_image`` to it. A class rather than a closure so
    that DataLoader workers can pickle it.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    @staticmethod
    def _tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self._tensor(eval_image(img, self.size))

    def from_path(self, path: str) -> torch.Tensor:
        return self._tensor(eval_pixels(path, self.size))

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
    """(path, label) items -> (float tensor [3, S, S] in [0, 1], label).

    A transform with a ``from_path`` method (``EvalTransform``) is given the path; any other
    (``train_transform``) the RGB image ``open_rgb`` decodes.
    """

    def __init__(self, items: Sequence[tuple[str, int]], transform: Transform) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        from_path = getattr(self.transform, "from_path", None)  # the eval transform decodes files itself
        if from_path is not None:
            return from_path(path), label
        return self.transform(open_rgb(path)), label
