"""Metrics against matrices worked out by hand."""

import pytest

from branchlora.evaluation.metrics import acc, all_metrics, bwt, forgetting, fwt, maa, mft, upper_masked

# 3 tasks; row 0 is the base model.
R = [
    [10.0, 20.0, 5.0],
    [80.0, 30.0, 10.0],
    [60.0, 90.0, 20.0],
    [40.0, 70.0, 70.0],
]


def test_hand_computed_values():
    assert acc(R) == pytest.approx((40 + 70 + 70) / 3)
    assert maa(R) == pytest.approx((80 + (60 + 90) / 2 + (40 + 70 + 70) / 3) / 3)
    assert bwt(R) == pytest.approx(((40 - 80) + (70 - 90)) / 2)
    assert mft(R) == pytest.approx((80 + 90 + 70) / 3)
    assert fwt(R) == pytest.approx(((30 - 20) + (20 - 5)) / 2)
    # task 1: best of R1, R2 = 80 -> 40; task 2: best of R1, R2 = 90 -> 70
    assert forgetting(R) == pytest.approx((40 + 20) / 2)


def test_forgetting_takes_the_best_over_every_earlier_row():
    """Chaudhry et al.'s definition: the rows before a task was learned count too (row 0, the untrained
    model, does not).  Task 2 scores 95 after task 1 (forward transfer), 60 after learning it, 50 at the end."""
    R = [
        [99.0, 99.0, 0.0],
        [80.0, 95.0, 0.0],
        [70.0, 60.0, 0.0],
        [50.0, 50.0, 90.0],
    ]
    assert forgetting(R) == pytest.approx(((80 - 50) + (95 - 50)) / 2)  # not (60 - 50) for task 2


def test_no_forgetting_and_single_task():
    perfect = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]]
    assert all_metrics(perfect) == {"acc": 100, "maa": 100, "bwt": 0, "mft": 100, "fwt": 0, "forgetting": 0}
    one = [[5.0], [50.0]]
    assert (acc(one), bwt(one), fwt(one), forgetting(one)) == (50.0, 0.0, 0.0, 0.0)


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match="T \\+ 1 rows of T scores, got 2 rows"):
        acc([[1.0, 2.0], [3.0, 4.0]])


def test_without_the_upper_triangle_the_metrics_that_need_it_are_na():
    """eval.future off: row 0 and the upper triangle are None; ACC, MAA, BWT and MFT use none of them, FWT and
    forgetting (whose best earlier score includes the rows before a task was learned) cannot be computed."""
    seen = [[None, None, None], [80.0, None, None], [60.0, 90.0, None], [40.0, 70.0, 70.0]]
    # MAA = (80 + (60 + 90) / 2 + (40 + 70 + 70) / 3) / 3; BWT = ((40 - 80) + (70 - 90)) / 2
    expected = {"acc": 60.0, "maa": 71.6667, "bwt": -30.0, "mft": 80.0, "fwt": None, "forgetting": None}
    assert all_metrics(seen) == expected
    assert upper_masked(R[1], 1) == [80.0, None, None] and upper_masked(R[3], 3) == R[3]
