"""lemur._validation: the checks shared by the Python layer."""

import numpy as np
import pytest

from lemur import _validation


@pytest.mark.parametrize("rows", [4, 2 * _validation.SERIAL_CHECK_BYTES // (64 * 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_check_finite_names_the_first_bad_row_at_any_size(rows, dtype):
    # float32 below SERIAL_CHECK_BYTES on one thread, above on several: the same answer
    values = np.ones((rows, 64), dtype)
    _validation.check_finite(values, name="values", num_threads=2)
    values[rows - 1, 5] = np.nan
    values[rows - 2, 7] = np.inf
    with pytest.raises(ValueError, match=rf"values contains NaN or infinite values at index \({rows - 2},\)"):
        _validation.check_finite(values, name="values", num_threads=2)
