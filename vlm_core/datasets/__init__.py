"""Dataset readers and the Fashion-MNIST scene generator."""

from vlm_core.contracts.sample import Sample
from vlm_core.datasets.coco import CocoDataset
from vlm_core.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from vlm_core.datasets.imagefolder import ImageFolderDataset
from vlm_core.datasets.scenes import (
    SCENE_CLASSES,
    SCENE_SEGMENTATION_CLASSES,
    SceneConfig,
    SceneGenerator,
    SceneVideo,
)
from vlm_core.datasets.voc import VocSegmentationDataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SCENE_CLASSES",
    "SCENE_SEGMENTATION_CLASSES",
    "CocoDataset",
    "ImageFolderDataset",
    "Sample",
    "SceneConfig",
    "SceneGenerator",
    "SceneVideo",
    "VocSegmentationDataset",
    "load_fashion_mnist",
]
