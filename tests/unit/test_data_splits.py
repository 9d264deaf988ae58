"""Splits: time order, sharing windows kept together, embargo, stratification, leakage report."""

import pandas as pd
import pytest

from moola_core.data.splits import Split, check_split, leakage_report, split_labeled
from moola_core.data.synthetic import make_labeled_set
from moola_core.errors import MoolaError, ValidationError
from moola_core.spec import LABELS


@pytest.fixture(scope="module")
def labeled():
    return make_labeled_set(174, seed=5)


def test_split_is_complete_time_ordered_and_leak_free(labeled):
    split = split_labeled(labeled, embargo_minutes=105)
    ids = split.train + split.val + split.test + split.purged
    assert sorted(ids) == sorted(labeled["window_id"])
    assert len(split.purged) <= 6
    by_id = labeled.set_index("window_id")
    # every train window ends before every val window starts, and val before test
    for earlier, later in ((split.train, split.val), (split.val, split.test)):
        assert by_id.loc[earlier, "end_ts"].max() < by_id.loc[later, "start_ts"].min()
    report = leakage_report(labeled, split, embargo_minutes=105)
    assert report.ok and report.time_checked and not report.pairs
    # about the requested fractions
    n = len(labeled)
    assert abs(len(split.train) / n - 0.7) < 0.06
    assert abs(len(split.test) / n - 0.15) < 0.06


def test_augmented_copies_stay_with_their_source(labeled):
    split = split_labeled(labeled)
    where = split.assignment()
    augmented = [w for w in labeled["window_id"] if "-aug" in w]
    assert augmented
    for w in augmented:
        source = w.split("-aug")[0]
        if w in where and source in where:
            assert where[w] == where[source]


def test_every_split_holds_every_label(labeled):
    report = leakage_report(labeled, split_labeled(labeled))
    for name, counts in report.label_counts.items():
        assert all(counts[label] > 0 for label in LABELS), name


def test_the_report_finds_a_leaking_split(labeled):
    good = split_labeled(labeled)
    moved = next(w for w in good.train if "-aug" in w)
    bad = Split([w for w in good.train if w != moved], good.val, good.test + [moved])
    report = leakage_report(labeled, bad)
    assert not report.ok
    pair = report.pairs[0]
    assert {pair.window_a, pair.window_b} == {moved, moved.split("-aug")[0]}
    assert "time overlap" in pair.reason and "identical bars" in pair.reason
    with pytest.raises(ValidationError, match="the split leaks"):
        check_split(labeled, bad)


def test_without_time_columns_identical_bars_still_reveal_sharing(labeled):
    bare = labeled.drop(columns=["start_ts", "end_ts"])
    split = split_labeled(bare)
    assert leakage_report(bare, split).ok
    moved = next(w for w in split.train if "-aug" in w)
    bad = Split([w for w in split.train if w != moved], split.val, split.test + [moved])
    report = leakage_report(bare, bad)
    assert not report.ok and not report.time_checked
    assert "identical bars" in report.pairs[0].reason


def test_embargo_breaches_are_reported(labeled):
    split = split_labeled(labeled, embargo_minutes=0)
    # a day-long embargo cannot hold between consecutive trading days
    report = leakage_report(labeled, split, embargo_minutes=24 * 60 * 5)
    assert report.embargo_breaches and not report.ok


def test_bad_arguments(labeled):
    with pytest.raises(MoolaError, match="fractions"):
        split_labeled(labeled, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(MoolaError, match="cannot be split"):
        split_labeled(labeled.head(2))
    with pytest.raises(MoolaError, match="absent from the set"):
        leakage_report(labeled, Split(["nope"], [], []))


def test_small_sets_still_split_when_labels_are_rare():
    df = make_labeled_set(12, seed=1, consolidation_share=0.95)
    split = split_labeled(df)
    assert split.train and split.test
    assert leakage_report(df, split).ok
    assert isinstance(pd.Timestamp(split.boundaries[0]), pd.Timestamp)
