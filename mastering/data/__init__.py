"""Training data: the pair manifest and loader users bring (:mod:`mastering.data.pairs`), an
offline procedural corpus generator (:mod:`mastering.data.corpus`), the two routes to reference
masters (:mod:`mastering.data.demaster`, :mod:`mastering.data.reference`) and a bank of room
impulse responses (:mod:`mastering.data.rir`).

Only :mod:`mastering.data.pairs` is imported here; the generator modules need optional
packages (pretty_midi, pedalboard, pyroomacoustics) and are imported where used.
"""

from mastering.data.pairs import (
    PAIR_COLUMNS,
    SPLITS,
    AlignedPair,
    CropConfig,
    PairBatch,
    PairChecks,
    PairCrops,
    PairDataError,
    PairRecord,
    PairStream,
    align_pair,
    estimate_lag,
    load_pair,
    read_pair_manifest,
    write_pair_manifest,
)

__all__ = [
    "PAIR_COLUMNS",
    "SPLITS",
    "AlignedPair",
    "CropConfig",
    "PairBatch",
    "PairChecks",
    "PairCrops",
    "PairDataError",
    "PairRecord",
    "PairStream",
    "align_pair",
    "estimate_lag",
    "load_pair",
    "read_pair_manifest",
    "write_pair_manifest",
]
