"""Problem sources, one module per kind (`procedural`, `hub`), and `load`: one configured source."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from machinery.config import HubSource, ProceduralSource


def load(spec: ProceduralSource | HubSource, seed: int, *, limit: int | None = None
         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected) problems of one configured source; `seed` applies when the spec sets none.

    `limit` caps the rows on top of the spec's own `n` or `limit` (the smaller wins).
    """
    from curation.sources import hub, procedural
    from machinery.config import ProceduralSource

    if isinstance(spec, ProceduralSource):
        n = min(spec.n, limit) if limit else spec.n
        return procedural.load(spec.task, n, spec.seed if spec.seed is not None else seed,
                               allow_unsafe_scorer=spec.allow_unsafe_scorer, **spec.options)
    caps = [x for x in (spec.limit, limit) if x is not None]
    return hub.load(spec.id, spec.data_files, spec.split, config=spec.config, revision=spec.revision,
                    limit=min(caps) if caps else None)
