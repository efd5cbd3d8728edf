"""The durable store of a critique run: every sample's explanation, the critic's verdicts and
the reviewer's overrides, on disk, for runs of 10^3 to 10^6 images.

A run is a folder: `manifest.json` (what the run was made from, written once and then only
extended), `run.sqlite` (one row per sample, one per cluster, an append-only audit trail) and
`samples/` (PNG images and a compressed `.npz` of arrays per sample, in folders of 1,000).

Why SQLite and not Parquet: a critique run grows one sample at a time over hours while a
reviewer reads it and changes single verdicts. SQLite appends a row in one small transaction
(Parquet files are immutable: appends mean many small files or rewrites), survives `kill -9` at
any moment (a transaction is in or not; Parquet writers lose an unclosed file's footer), lets the
review app read while the critique writes (WAL mode: readers never block the one writer), updates
a verdict in place with its audit entry in the same transaction, and answers filtered, sorted,
paged queries from indexes without loading the table. Bulk arrays stay out of the database, in
files written atomically (temporary name, fsync, rename) before the row that points to them.

    run = CritiqueRun.create("runs/audit-1", RunManifest(dataset="decoy-digits", split="train",
                                                         class_names=names))
    run.add(RunRecord(...), SampleArrays(images=..., labels=..., responsibilities=...))
    run.override(12, "red", False, reviewer="dr-lee")
    mask = run.effective_mask(12)

The names below are imported lazily, so `import lvlmva.runs.files` stays light.
"""

from lvlmva.lazy_imports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lvlmva.runs.files": ("StoredArrays",),
        "lvlmva.runs.query": ("SORT_KEYS", "RunQuery"),
        "lvlmva.runs.records": (
            "STATUSES", "STORE_VERSION", "AuditEntry", "ExportResult", "MissingSample", "Page",
            "ReviewedSample", "RunManifest", "RunRecord", "RunSummary", "SampleArrays",
            "public_settings",
        ),
        "lvlmva.runs.store": ("CritiqueRun",),
    },
)
