import math

import pytest

from era_core.validation import check_positive, check_range


def test_message_names_parameter_value_and_interval():
    with pytest.raises(ValueError, match=r"^tau must be in \(2\.71828, inf\), got 2 \(why\)$"):
        check_range("tau", 2.0, math.e, None, low_inclusive=False, why="why")
    with pytest.raises(ValueError, match=r"^k must be in \[0, 1\], got 1\.5$"):
        check_range("k", 1.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^x must be in \(-inf, 3\), got 3$"):
        check_range("x", 3.0, None, 3.0, high_inclusive=False)


def test_bounds_inclusive_and_nan_refused():
    check_range("x", 0.0, 0.0, 1.0)
    check_range("x", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="x must be"):
        check_range("x", math.nan, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got -1"):
        check_positive("lr", -1.0)
    with pytest.raises(ValueError, match="lr must be"):
        check_positive("lr", 0.0)
