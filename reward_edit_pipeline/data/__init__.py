"""Editing triplets and reward records (no torch needed): reading triplets, reading and writing reward records in
every format, importing the official annotations into a store.

Layering: `reward_edit_pipeline.records` (the `Triplet` and `RewardRecord` types) < `judge` (grading, the store) <
`data` (formats that read or write the store) < `train`, `hub`, `commands`.

>>> from reward_edit_pipeline.data import iter_triplets, load_reward_records
>>> for triplet in iter_triplets("data/clip-filtered"):  # doctest: +SKIP
...     triplet.id, triplet.instruction, triplet.original, triplet.edited
>>> records = load_reward_records("RewardEdit_20K.json")  # doctest: +SKIP
>>> records["0000011"].scores, records["0000011"].failure_text  # doctest: +SKIP
"""

from ..records import RewardRecord, Triplet, image_reference
from .formats import (
    EXPORT_FORMATS,
    check_on_incomplete,
    detect_format,
    export_store,
    is_complete_row,
    iter_export_rows,
    load_reward_records,
    parse_official_json,
    read_failure_text,
    read_official_json,
    record_from_row,
    report_incomplete,
    store_rows,
)
from .official import import_official
from .triplets import (
    is_saved_dataset_folder,
    iter_dataset,
    iter_instruct_pix2pix_folder,
    iter_manifest,
    iter_triplets,
)

__all__ = [
    "EXPORT_FORMATS",
    "RewardRecord",
    "Triplet",
    "check_on_incomplete",
    "detect_format",
    "export_store",
    "image_reference",
    "import_official",
    "is_complete_row",
    "is_saved_dataset_folder",
    "iter_export_rows",
    "iter_dataset",
    "iter_instruct_pix2pix_folder",
    "iter_manifest",
    "iter_triplets",
    "load_reward_records",
    "parse_official_json",
    "read_failure_text",
    "read_official_json",
    "record_from_row",
    "report_incomplete",
    "store_rows",
]
