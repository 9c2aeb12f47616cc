"""Data: ImageFolder and CoOp-layout datasets, few-shot splits, description files."""

from .coop import DATASETS, detect_layout, load_dataset
from .descriptions import load_descriptions, sample_descriptions, template_sentences
from .fewshot import fewshot_splits
from .imagefolder import IMAGE_EXTENSIONS, list_images, load_imagefolder
from .images import ImageListDataset, eval_transform, open_rgb, train_transform
from .splits import DatasetSplits

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "ImageListDataset",
    "detect_layout",
    "eval_transform",
    "fewshot_splits",
    "list_images",
    "load_dataset",
    "load_descriptions",
    "load_imagefolder",
    "open_rgb",
    "sample_descriptions",
    "template_sentences",
    "train_transform",
]
