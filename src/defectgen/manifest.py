"""The manifest: one Parquet table per stage output, one row per image.

This module owns the schema (docs/architecture.md lists the columns); stages
build rows as plain dicts and hand them here. Columns may be added, never renamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from defectgen.atomic import atomic_write_bytes
from defectgen.errors import DataError

MANIFEST_NAME = "manifest.parquet"

BOX_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # sha256 of the decoded pixels
        pa.field("path", pa.string(), nullable=False),  # relative to the manifest's directory
        pa.field("label", pa.string(), nullable=False),
        pa.field("split", pa.string()),  # train / val / test; null before preprocess
        pa.field("in_subset", pa.bool_(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("mask_path", pa.string()),
        pa.field("boxes", pa.list_(BOX_TYPE)),
        pa.field("origin", pa.string(), nullable=False),  # real / synthetic
        pa.field("parent_id", pa.string()),
        pa.field("generator", pa.string()),
        pa.field("gen_params", pa.string()),  # JSON
        pa.field("source", pa.string(), nullable=False),  # dataset name @ version
        # Extensions beyond the design page:
        pa.field("raw_id", pa.string()),  # id of the ingested image a preprocessed row came from
        pa.field("original_path", pa.string()),  # path inside the raw dataset, for people
        # preprocess.resize pad: the image's own pixels inside the padded square (output px)
        pa.field("content_box", BOX_TYPE),
    ]
)
# columns added after manifests were first written: read as null where a file lacks them
ADDED_LATER = ("content_box",)

COLUMNS = tuple(SCHEMA.names)
_NULLABLE_DEFAULTS = {
    "split": None,
    "in_subset": False,
    "mask_path": None,
    "boxes": None,
    "origin": "real",
    "parent_id": None,
    "generator": None,
    "gen_params": None,
    "raw_id": None,
    "original_path": None,
    "content_box": None,
}


def make_row(**values) -> dict:
    """A manifest row with defaults filled in; unknown columns are a programming error."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not manifest columns: {sorted(unknown)}")
    row = dict(_NULLABLE_DEFAULTS)
    row.update(values)
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise KeyError(f"manifest row lacks required columns: {missing}")
    return {c: row[c] for c in COLUMNS}


def validate_rows(rows: list[dict], where: str) -> None:
    """Check the invariants every manifest keeps; raises DataError naming the row."""
    seen: set[str] = set()
    for row in rows:
        rid = row["id"]
        if rid in seen:
            raise DataError(f"{where}: id {rid[:12]} appears twice ({row['path']})")
        seen.add(rid)
        if row["split"] not in (None, "train", "val", "test"):
            raise DataError(f"{where}: {row['path']}: split {row['split']!r} is not train/val/test")
        if row["origin"] not in ("real", "synthetic"):
            raise DataError(
                f"{where}: {row['path']}: origin {row['origin']!r} is not real/synthetic"
            )
        if row["in_subset"] and row["split"] != "train":
            raise DataError(f"{where}: {row['path']}: in_subset is only for train rows")
        if row["origin"] == "synthetic":
            if row["split"] != "train":
                raise DataError(
                    f"{where}: synthetic {row['path']} is in split {row['split']!r}; "
                    "synthetic images may only join train"
                )
            if not row["parent_id"] and not row["generator"]:
                raise DataError(f"{where}: synthetic {row['path']} carries no provenance")


def write_manifest(rows: Iterable[dict], path: Path) -> Path:
    """Validate and write rows as Parquet, atomically (temp file, then rename)."""
    rows = list(rows)
    validate_rows(rows, str(path))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def read_table(path: Path) -> pa.Table:
    """Read a manifest and check that its schema holds every column we know."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path}: manifest not found; run the stage that produces it first "
            "(e.g. `defectgen ingest`)"
        )
    table = pq.read_table(path)
    for name in ADDED_LATER:
        if name not in table.schema.names:
            table = table.append_column(
                SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type)
            )
    missing = [c for c in COLUMNS if c not in table.schema.names]
    if missing:
        raise DataError(f"{path}: not a defectgen manifest (missing columns {missing})")
    return table.select(list(COLUMNS)).cast(SCHEMA)


def read_rows(path: Path) -> list[dict]:
    """A manifest as a list of row dicts (box lists stay lists of dicts)."""
    return read_table(path).to_pylist()


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest as a DataFrame, for analysis and reports."""
    return read_table(path).to_pandas()
