"""Datasets: the synthetic generator and validated COCO loading."""

from zoomdet.data.coco import CocoDataset, DatasetError, Sample, dataset_stats, read_image
from zoomdet.data.synth import SynthConfig, generate_dataset, generate_image

__all__ = ["CocoDataset", "DatasetError", "Sample", "dataset_stats", "read_image", "SynthConfig", "generate_dataset",
           "generate_image"]
