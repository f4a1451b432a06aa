"""Sample-schema validation: column types, and row-level errors that name file, row and column."""

import math

import pyarrow as pa
import pytest
from data_configs import data_config

from longer_train.config import DataConfig, FeatureConfig
from longer_train.data.schema import SchemaError, expected_columns, validate_batch, validate_schema

PATH = "data/train/part-00007.parquet"
LIST = pa.list_(pa.int64())


def _cfg(dense: bool = False) -> DataConfig:
    extra = [FeatureConfig("user_activity", "dense", None)] if dense else []
    return data_config({"item": 100, "category": 10, "action": 3, "user": 50}, extra)


def _columns() -> dict:
    """Three valid rows; the last has an empty history."""
    return {
        "user_id": pa.array([0, 1, 2], pa.int64()),
        "item_id": pa.array([5, 99, 0], pa.int64()),
        "category_id": pa.array([1, 9, 0], pa.int64()),
        "timestamp": pa.array([100, 200, 300], pa.int64()),
        "hist_item_id": pa.array([[1, 2], [3], []], LIST),
        "hist_category_id": pa.array([[1, 2], [3], []], LIST),
        "hist_action": pa.array([[0, 2], [1], []], LIST),
        "hist_timestamp": pa.array([[90, 100], [150], []], LIST),
        "label": pa.array([0.0, 1.0, 0.0], pa.float32()),
        "user_activity": pa.array([0.5, -1.0, 0.0], pa.float32()),
    }


def _batch(**replace: pa.Array) -> pa.RecordBatch:
    return pa.record_batch({**_columns(), **replace})


def test_expected_columns_follow_the_roles():
    assert expected_columns(_cfg(dense=True)) == {
        "item_id": "int64",
        "category_id": "int64",
        "hist_item_id": "list<int64>",
        "hist_category_id": "list<int64>",
        "hist_action": "list<int64>",
        "user_id": "int64",  # the GAUC grouping column is stricter than the user role
        "user_activity": "float",
        "label": "float",
        "timestamp": "int64",
        "hist_timestamp": "list<int64>",
    }


def test_valid_batch_with_an_empty_history_passes():
    batch = _batch()
    validate_schema(batch.schema, _cfg(dense=True), PATH)
    validate_batch(batch, _cfg(dense=True), PATH)


def test_all_histories_empty_pass():
    empty = pa.array([[], [], []], LIST)
    batch = _batch(hist_item_id=empty, hist_category_id=empty, hist_action=empty, hist_timestamp=empty)
    validate_batch(batch, _cfg(), PATH)


def test_label_and_dense_accept_any_numeric_type():
    batch = _batch(label=pa.array([0, 1, 1], pa.int8()), user_activity=pa.array([1, 2, 3], pa.int32()))
    validate_batch(batch, _cfg(dense=True), PATH)


def test_user_role_accepts_a_list_column():
    cfg = _cfg()
    cfg.features.append(FeatureConfig("tags", "user", "user"))
    validate_batch(_batch(tags=pa.array([[1, 2], [], [49]], LIST)), cfg, PATH)
    with pytest.raises(SchemaError, match=r"row 2, column 'tags'.*id 50 is outside 0\.\.49"):
        validate_batch(_batch(tags=pa.array([[1, 2], [], [50]], LIST)), cfg, PATH)


def test_missing_column_names_file_column_and_expected_type():
    schema = _batch().schema.remove(_batch().schema.get_field_index("hist_action"))
    with pytest.raises(SchemaError) as err:
        validate_schema(schema, _cfg(), PATH)
    msg = str(err.value)
    assert PATH in msg and "missing column 'hist_action'" in msg and "list<int64>" in msg


@pytest.mark.parametrize(
    "column, array, actual",
    [
        ("item_id", pa.array([5, 99, 0], pa.int32()), "int32"),
        ("timestamp", pa.array([100.0, 200.0, 300.0], pa.float64()), "double"),
        ("hist_action", pa.array([[0, 2], [1], []], pa.list_(pa.int32())), "int32"),
        ("hist_item_id", pa.array([1, 2, 3], pa.int64()), "int64"),
        ("label", pa.array(["0", "1", "0"]), "string"),
        ("user_activity", pa.array([True, False, True]), "bool"),
    ],
)
def test_wrong_type_names_file_column_expected_and_actual(column, array, actual):
    with pytest.raises(SchemaError) as err:
        validate_schema(_batch(**{column: array}).schema, _cfg(dense=True), PATH)
    msg = str(err.value)
    assert PATH in msg and f"column '{column}'" in msg and actual in msg
    assert f"expected {expected_columns(_cfg(dense=True))[column]}" in msg


def test_int32_ids_are_rejected_with_a_hint():
    with pytest.raises(SchemaError, match="must be int64"):
        validate_schema(_batch(user_id=pa.array([0, 1, 2], pa.int32())).schema, _cfg(), PATH)


@pytest.mark.parametrize(
    "column, array, row, fragment",
    [
        ("item_id", pa.array([5, None, 0], pa.int64()), 1, "null"),
        ("hist_item_id", pa.array([[1, 2], [3], None], LIST), 2, "null"),
        ("hist_action", pa.array([[0, 2], [None], []], LIST), 1, "null element"),
        ("label", pa.array([0.0, None, 1.0], pa.float32()), 1, "null"),
        ("hist_category_id", pa.array([[1], [3], []], LIST), 0, "1 events but 'hist_timestamp' has 2"),

        ("category_id", pa.array([1, 9, -3], pa.int64()), 2, "id -3 is outside 0..9"),
        ("hist_item_id", pa.array([[1, 2], [100], []], LIST), 1, "num_embeddings=100"),
        ("user_id", pa.array([0, 50, 2], pa.int64()), 1, "table 'user'"),
        ("hist_action", pa.array([[0, 3], [1], []], LIST), 0, "id 3 is outside 0..2"),
        ("label", pa.array([0.0, 0.5, 1.0], pa.float32()), 1, "expected 0 or 1"),
        ("label", pa.array([0.0, 1.0, math.nan], pa.float32()), 2, "label is nan"),
        ("hist_timestamp", pa.array([[90, 101], [150], []], LIST), 0, "after the request time 100"),
        ("user_activity", pa.array([0.5, math.nan, 0.0], pa.float32()), 1, "finite"),
    ],
)
def test_row_errors_name_file_row_and_column(column, array, row, fragment):
    with pytest.raises(SchemaError) as err:
        validate_batch(_batch(**{column: array}), _cfg(dense=True), PATH, first_row=8192)
    msg = str(err.value)
    assert msg.startswith(f"{PATH}: row {8192 + row}, column '{column}': ")
    assert fragment in msg


def test_unequal_lengths_name_both_columns():
    batch = _batch(hist_timestamp=pa.array([[90, 100], [150], [1]], LIST))
    with pytest.raises(SchemaError) as err:
        validate_batch(batch, _cfg(), PATH)
    msg = str(err.value)
    assert msg.startswith(f"{PATH}: row 2, column 'hist_item_id': ")
    assert "0 events but 'hist_timestamp' has 1" in msg and "equal length" in msg


def test_the_first_offending_row_is_reported():
    batch = _batch(label=pa.array([0.0, 1.0, 2.0], pa.float32()), item_id=pa.array([5, 100, 0], pa.int64()))
    with pytest.raises(SchemaError, match=r"row 1, column 'item_id'"):
        validate_batch(batch, _cfg(), PATH)


def test_nulls_are_reported_before_value_errors():
    batch = _batch(label=pa.array([7.0, 1.0, 0.0], pa.float32()), item_id=pa.array([5, None, 0], pa.int64()))
    with pytest.raises(SchemaError, match=r"row 1, column 'item_id': value is null"):
        validate_batch(batch, _cfg(), PATH)


def test_rows_of_a_sliced_batch_are_counted_from_first_row():
    validate_batch(_batch().slice(1), _cfg(), PATH, first_row=1)
    bad = _batch(hist_action=pa.array([[0, 2], [1], [1]], LIST))
    with pytest.raises(SchemaError, match=r"row 2, column 'hist_action'"):
        validate_batch(bad.slice(1), _cfg(), PATH, first_row=1)
