"""Datasets: outside-data sources, restriction operators and the multiresolution store.

``read_source`` (any NetCDF/HDF5 file, by configuration) -> canonical ``(sample, y, x)``
Dataset -> ``build_level`` per grid size (coarsened by ``restrict``) -> ``write_netcdf`` ->
``open_level`` -> ``normalize`` for training.
"""

from mldiff.datasets.coarsen import METHODS, prolong, restrict
from mldiff.datasets.source import canonical_dataset, read_source
from mldiff.datasets.store import (
    SPLITS,
    build_level,
    denormalize,
    normalize,
    open_level,
    split_indices,
)

__all__ = [
    "METHODS",
    "SPLITS",
    "build_level",
    "canonical_dataset",
    "denormalize",
    "normalize",
    "open_level",
    "prolong",
    "read_source",
    "restrict",
    "split_indices",
]
