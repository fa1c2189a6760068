"""The manifest's schema: a column added later reads as null from an older file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from defectgen import manifest


def test_a_manifest_written_before_a_column_was_added_reads_it_as_null(tmp_path):
    row = manifest.make_row(id="a" * 64, path="images/x.png", label="crack", split="train",
                            width=8, height=8, channels=1, source="fixture")  # fmt: skip
    older = pa.schema([f for f in manifest.SCHEMA if f.name not in manifest.ADDED_LATER])
    table = pa.Table.from_pylist([{k: row[k] for k in older.names}], schema=older)
    pq.write_table(table, tmp_path / manifest.MANIFEST_NAME)
    (read,) = manifest.read_rows(tmp_path)
    assert read["content_box"] is None and read["label"] == "crack"
