"""Broken copies of a prepared dataset, shared by the tests of how a bad row is reported."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq


def bad_label_copy(tiny, tmp_path):
    """A copy of the data whose first training file has label 0.5 in row 3; returns (root, that file)."""
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    part = sorted((data / "train").glob("*.parquet"))[0]
    table = pq.read_table(part)
    labels = table["label"].to_numpy().copy()
    labels[3] = 0.5
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), part)
    return data, part
