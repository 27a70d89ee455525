"""Audio data: manifests, random-crop datasets, tar shards with cached targets, synthetic music.

``mert data manifest`` / ``mert data shard`` (:mod:`mert.cli.data`) prepare a corpus; the datasets here all yield
the same item dict and batch with :func:`collate_audio` (see docs/data.md). soundfile and tqdm load on first use.
"""

from mert.data.datasets import CropDataset, SyntheticDataset, collate_audio
from mert.data.manifest import ManifestEntry, ScanResult, read_manifest, scan_audio, write_manifest
from mert.data.shards import ShardDataset, ShardWriteResult, write_shards
from mert.data.synthetic import ClipLabels, render_clip, write_synthetic_corpus

__all__ = [
    "ClipLabels",
    "CropDataset",
    "ManifestEntry",
    "ScanResult",
    "ShardDataset",
    "ShardWriteResult",
    "SyntheticDataset",
    "collate_audio",
    "read_manifest",
    "render_clip",
    "scan_audio",
    "write_manifest",
    "write_shards",
    "write_synthetic_corpus",
]
