"""Datasets in the layouts people actually have, behind one API (docs/interfaces.md).

``open_dataset(path)`` autodetects MindEye2 (betas HDF5 + behaviour shards), MindEye1
(voxel shards) or plain (trial table + voxel matrix); ``preprocess.load_split`` turns a
subject's trials into z-scored model inputs.
"""

from mindsearch.data.dataset import BrainDataset, open_dataset

__all__ = ["BrainDataset", "open_dataset"]
