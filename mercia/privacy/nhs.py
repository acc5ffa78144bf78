"""NHS number validation, vectorised over whole columns.

The check digit is the NHS modulus-11 algorithm (NHS Data Dictionary, "NHS Number"): weights 10..2
on the first nine digits, ``11 - (sum mod 11)``, where 11 means 0 and 10 means the number is invalid.
Numbers in the 999 range are never issued (NHS Digital reserves them for testing), so they are
accepted only when the caller says the data is synthetic.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_WEIGHTS = np.arange(10, 1, -1)


def normalise_nhs_numbers(values: pa.Array) -> pa.Array:
    """Strip spaces and dashes (``943 476 5919`` and ``943-476-5919`` are common in extracts)."""
    return pc.replace_substring_regex(pc.cast(values, pa.string()), r"[\s-]", "")


def nhs_number_problems(values: pa.Array, allow_synthetic: bool = False) -> pa.Array:
    """One reason string per value (null = valid, or no number given).

    ``values`` must already be normalised.  Reasons are fixed phrases that never quote the number.
    """
    text = values.to_numpy(zero_copy_only=False)
    present = np.array([v is not None and v != "" for v in text], dtype=bool)
    ten_digits = np.array([isinstance(v, str) and len(v) == 10 and v.isascii() and v.isdigit()
                           for v in text], dtype=bool)
    reasons = np.full(len(text), None, dtype=object)
    reasons[present & ~ten_digits] = "NHS number is not 10 digits"
    if ten_digits.any():
        digits = np.frombuffer("".join(text[ten_digits]).encode("ascii"), dtype=np.uint8) - ord("0")
        digits = digits.reshape(-1, 10).astype(np.int64)
        check = 11 - (digits[:, :9] @ _WEIGHTS) % 11
        check[check == 11] = 0
        bad = (check == 10) | (check != digits[:, 9])
        synthetic = (digits[:, 0] == 9) & (digits[:, 1] == 9) & (digits[:, 2] == 9)
        sub = np.full(ten_digits.sum(), None, dtype=object)
        sub[bad] = "NHS number fails the modulus-11 check digit"
        if not allow_synthetic:
            sub[~bad & synthetic] = "NHS number in the never-issued 999 range (synthetic data not allowed)"
        reasons[ten_digits] = sub
    return pa.array(reasons, pa.string())


def is_valid_nhs_number(value: str, allow_synthetic: bool = False) -> bool:
    normalised = normalise_nhs_numbers(pa.array([value]))
    return nhs_number_problems(normalised, allow_synthetic)[0].as_py() is None and bool(normalised[0].as_py())
