"""Editing triplets and reward records (no torch needed).

>>> from reward_edit_pipeline.data import iter_triplets, load_reward_records
>>> for triplet in iter_triplets("data/clip-filtered"):  # doctest: +SKIP
...     triplet.id, triplet.instruction, triplet.original, triplet.edited
>>> records = load_reward_records("RewardEdit_20K.json")  # doctest: +SKIP
>>> records["0000011"].scores, records["0000011"].failure_text  # doctest: +SKIP
"""

from .records import (
    EXPORT_FORMATS,
    RewardRecord,
    export_store,
    load_reward_records,
    parse_official_json,
    read_official_json,
    store_rows,
)
from .triplets import Triplet, image_reference, iter_dataset, iter_instruct_pix2pix_folder, iter_manifest, iter_triplets

__all__ = [
    "EXPORT_FORMATS",
    "RewardRecord",
    "Triplet",
    "export_store",
    "image_reference",
    "iter_dataset",
    "iter_instruct_pix2pix_folder",
    "iter_manifest",
    "iter_triplets",
    "load_reward_records",
    "parse_official_json",
    "read_official_json",
    "store_rows",
]
