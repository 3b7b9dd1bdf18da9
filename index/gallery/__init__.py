"""The gallery: collections, register, identify, forget, persons, listings,
export / import, stats.

By role: ``checks`` (input checks and new ids), ``core`` (:class:`GalleryCore`,
the store-side half of every operation, which turns each committed write into
per-shard ops), ``shards`` (the :class:`ShardSet` contract and the in-process
:class:`LocalShards`), ``service`` (:class:`GalleryService`, store first and then
the shards) and ``in_process`` (:class:`InProcessGallery`, the service called
synchronously). Vectors are L2-normalised on the way in, so the inner products
shards return are cosine similarities. The audit trail and API keys are the
access service's (``index.access_service``). The Ray actor and Serve deployment
live in ``deployments/serve/gallery.py``. This package re-exports the public names.
"""

from index.gallery.checks import (COLLECTION_PATTERN, MAX_DIM, MAX_EXPORT_PAGE, MAX_K,
                                  MAX_LABELS, MAX_PAGE, MAX_QUERY, check_collection_name,
                                  check_import_row, new_ids)
from index.gallery.shards import LocalShards, Plan, ShardSet, verify_ids
from index.gallery.core import GalleryCore, collection_dict, face_dict
from index.gallery.service import GalleryService
from index.gallery.in_process import InProcessGallery

__all__ = [
    "COLLECTION_PATTERN", "MAX_DIM", "MAX_EXPORT_PAGE", "MAX_K", "MAX_LABELS", "MAX_PAGE",
    "MAX_QUERY",
    "GalleryCore", "GalleryService", "InProcessGallery", "LocalShards", "Plan", "ShardSet",
    "check_collection_name", "check_import_row", "collection_dict", "face_dict", "new_ids",
    "verify_ids",
]
