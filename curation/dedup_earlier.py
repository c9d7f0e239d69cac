"""Earlier versions of the dataset in the dedup stage's layout, so a refresh keeps only rows new to all of them.

Each earlier version's index entry (`dedup_index.LocalIndex`: ids, exact keys, signatures of
its kept rows) is read a row shard at a time, like the pull output in phase (a): its rows get
partition records and a signature array under the stage's shard folder, numbered after the
current rows, so phase (b) finds current rows that an earlier row duplicates partition by
partition. No process holds a whole earlier version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curation import minhash
from curation.dedup_shards import (
    Hashing,
    key64,
    part_path,
    records,
    save_array,
    sig_path,
    split,
)
from machinery import store
from machinery.shards import ShardOutput

EARLIER_ROWS = "dedup.earlier_rows"


def hash_earlier(item: tuple[str, Path, int, int, int], *, folder: Path, hashing: Hashing) -> ShardOutput:
    """Rows [start, stop) of an earlier version's entry as docs first_doc..: records, signatures, ids."""
    label, path, start, stop, first_doc = item
    rows = store.read_rows(path, start, stop, ["id", "key", "sig"])
    sigs = np.frombuffer(b"".join(rows["sig"].to_list()), dtype=np.uint32).reshape(rows.height, hashing.num_perm)
    recs = records(minhash.band_keys(sigs, hashing.bands, hashing.rows), key64(rows["key"].to_list()), first_doc)
    for partition, part in enumerate(split(recs, hashing.partitions)):
        save_array(part, part_path(folder, partition, label))
    save_array(sigs, sig_path(folder, label))
    return ShardOutput(tables={"ids": rows.select(pl.col("id").cast(pl.String))}, counts={"rows": rows.height})
