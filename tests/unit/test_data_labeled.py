"""Labeled sets: schema, parquet round trip, aliases, every validation finding with row and
column, the pickled-column refusal, and model arrays."""

import pickle

import numpy as np
import pandas as pd
import pytest

from moola_core.data.labeled import (
    convert_pickled,
    read_labeled,
    to_model_arrays,
    validate_labeled,
    write_labeled,
)
from moola_core.data.synthetic import make_labeled_set
from moola_core.errors import MoolaError, ValidationError
from moola_core.spec import LABELS, N_FEATURES, WINDOW_LEN


@pytest.fixture(scope="module")
def labeled():
    return make_labeled_set(40, seed=2)


def findings(problems, severity="error"):
    return {(p.row, p.column) for p in problems if p.severity == severity}


def test_round_trip_through_parquet(labeled, tmp_path):
    path = write_labeled(labeled, tmp_path / "set.parquet")
    back = read_labeled(path)
    assert list(back["window_id"]) == list(labeled["window_id"])
    assert list(back["label"]) == list(labeled["label"])
    assert (back["expansion_start"] == labeled["expansion_start"]).all()
    for a, b in zip(back["features"], labeled["features"], strict=True):
        assert a.shape == (WINDOW_LEN, 4) and np.array_equal(a, b)
    assert (back["start_ts"] == labeled["start_ts"]).all()


def test_ptr_aliases_are_accepted(labeled, tmp_path):
    renamed = labeled.rename(columns={"expansion_start": "ptr_start", "expansion_end": "ptr_end"})
    path = tmp_path / "alias.parquet"
    renamed.assign(features=[f.tolist() for f in renamed["features"]]).to_parquet(path)
    back = read_labeled(path)
    assert "expansion_start" in back.columns and "ptr_start" not in back.columns
    assert to_model_arrays(renamed).start.tolist() == labeled["expansion_start"].tolist()


def test_a_clean_set_has_no_errors(labeled):
    problems = validate_labeled(labeled)
    assert not findings(problems)
    # the augmented copies share bars with their source: reported as warnings, not dropped
    assert any("shares bars" in p.message for p in problems)
    assert findings(validate_labeled(labeled, strict_overlap=True))


def test_every_problem_is_reported_with_row_and_column(labeled):
    bad = labeled.head(10).copy().reset_index(drop=True)
    bad = bad.drop(columns=["start_ts", "end_ts"])
    bad.loc[0, "expansion_start"] = 105  # out of range
    bad.loc[1, "expansion_start"] = 90  # start > end
    bad.loc[1, "expansion_end"] = 80
    bad.loc[2, "label"] = "breakout"  # unknown label
    bad.at[3, "features"] = bad.at[3, "features"][:100]  # wrong shape
    nan = bad.at[4, "features"].copy()
    nan[7, 2] = np.nan
    bad.at[4, "features"] = nan
    bad.loc[5, "window_id"] = bad.loc[6, "window_id"]  # duplicate id
    bad.at[7, "features"] = bad.at[8, "features"].copy()  # same bars under two ids
    broken = bad.at[9, "features"].copy()
    broken[3, 1] = broken[3, 2] * 0.5  # high below low
    bad.at[9, "features"] = broken
    problems = validate_labeled(bad)
    expected = {
        (0, "expansion_start"),
        (1, "expansion_start"),
        (2, "label"),
        (3, "features"),
        (4, "features"),
        (5, "window_id"),
        (6, "window_id"),
        (8, "features"),
        (9, "features"),
    }
    assert expected <= findings(problems)
    assert any("NaN" in p.message and p.row == 4 for p in problems)
    assert any("same bars as row 7" in p.message for p in problems)
    assert len(bad) == 10  # validation never drops a row
    with pytest.raises(ValidationError) as caught:
        to_model_arrays(bad)
    assert len(caught.value.problems) >= len(expected)


def test_missing_columns_and_non_integer_spans(labeled):
    df = labeled.drop(columns=["label"]).head(3).copy()
    df["expansion_end"] = [50.5, 60, 70]
    problems = validate_labeled(df)
    assert (None, "label") in findings(problems)
    assert (0, "expansion_end") in findings(problems)


def test_pickled_features_are_refused_with_a_way_out(labeled, tmp_path):
    pickled = labeled.head(5).copy()
    pickled["features"] = [pickle.dumps(f) for f in pickled["features"]]
    src = tmp_path / "pickled.parquet"
    pickled.to_parquet(src)
    with pytest.raises(ValidationError, match="convert-pickled"):
        read_labeled(src)
    problems = validate_labeled(pickled)
    assert {(i, "features") for i in range(5)} <= findings(problems)
    with pytest.raises(MoolaError, match="--trust"):
        convert_pickled(src, tmp_path / "out.parquet")
    out = convert_pickled(src, tmp_path / "out.parquet", trust=True)
    back = read_labeled(out)
    assert np.array_equal(back["features"].iloc[0], labeled["features"].iloc[0])


def test_missing_and_unreadable_files_raise_one_sentence(tmp_path):
    with pytest.raises(MoolaError, match="does not exist"):
        read_labeled(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(MoolaError, match="cannot read"):
        read_labeled(junk)


def test_model_arrays(labeled):
    arrays = to_model_arrays(labeled)
    n = len(labeled)
    assert arrays.x.shape == (n, WINDOW_LEN, N_FEATURES) and arrays.x.dtype == np.float32
    assert arrays.valid.shape == (n, WINDOW_LEN) and arrays.valid.dtype == bool
    assert arrays.label.dtype == np.int64 and set(arrays.label) <= {0, 1}
    assert [LABELS[i] for i in arrays.label] == list(labeled["label"])
    assert arrays.window_id == list(labeled["window_id"])
    assert (arrays.x[~arrays.valid] == 0).all()
    # features are computed per window: the first bars of every window are warm-up
    assert not arrays.valid[:, :19].any()
    # planted spans sit where the features are valid
    assert arrays.valid[np.arange(n), arrays.start].all()


def test_model_arrays_accept_list_cells(labeled):
    as_lists = labeled.assign(features=[f.tolist() for f in labeled["features"]])
    a, b = to_model_arrays(labeled), to_model_arrays(as_lists)
    assert np.array_equal(a.x, b.x)


def test_write_refuses_an_invalid_set(labeled, tmp_path):
    bad = labeled.copy()
    bad.loc[0, "label"] = "nope"
    with pytest.raises(ValidationError, match="row 0, column label"):
        write_labeled(bad, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_empty_frame_reports_missing_columns():
    problems = validate_labeled(pd.DataFrame())
    assert {c for _, c in findings(problems)} >= {"window_id", "label", "features"}


def test_sharing_is_found_without_time_columns(labeled):
    bare = labeled.drop(columns=["start_ts", "end_ts"])
    warnings = [p for p in validate_labeled(bare) if p.severity == "warning"]
    assert warnings and all(p.column == "features" for p in warnings)
    assert any("identical bars" in p.message for p in warnings)
