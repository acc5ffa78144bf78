"""WHO ICD-10 codes as OMOP concepts in the local range, with ids derived from the code itself.

Like HPO (``mercia.vocab.hpo``), an ICD-10 concept id is computed from the code, never assigned in
load order, so every store, extract and cohort definition agrees on it and a new ICD-10 release
cannot shift existing ids.  Range 2,000,000,000 .. 2,099,999,999 (HPO starts at 2,100,000,000):

- category ``LNN`` and subcategory ``LNN.d`` / ``LNN.dd``:
  ``2,010,000,000 + letter * 1,000,000 + NN * 10,000 + tail`` where letter is A=0 .. Z=25 and tail
  is 0 for the category, ``(d + 1) * 100`` for ``.d`` and ``(d1 + 1) * 100 + d2 + 1`` for ``.d1d2``.
  E11 -> 2,014,110,000; E11.9 -> 2,014,111,000; B18.09 -> 2,011,180,110.  (Starting at
  2,010,000,000 keeps A00 strictly above OMOP's 2,000,000,000 boundary.)
- block ``LNN-LNN`` (e.g. ``E10-E14``): ``2,080,000,000 + start * 2,600 + end`` where a code
  position is ``letter * 100 + NN``.
- chapter (Roman numeral I .. XXII): ``2,099,000,000 + chapter number``.
"""

from __future__ import annotations

import re

from mercia.vocab.local_ids import block_start

ICD10_VOCABULARY_ID = "ICD10"
ICD10_CONCEPT_OFFSET = block_start("ICD10")  # start of the block this vocabulary owns (local_ids)
_CODE_OFFSET = 2_010_000_000
_BLOCK_OFFSET = 2_080_000_000
_CHAPTER_OFFSET = 2_099_000_000
_CODE = re.compile(r"^([A-Z])(\d\d)(?:\.(\d)(\d)?)?$")
_BLOCK = re.compile(r"^([A-Z])(\d\d)-([A-Z])(\d\d)$")
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


def _roman_to_int(numeral: str) -> int:
    values = [_ROMAN[ch] for ch in numeral]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def icd10_concept_id(code: str) -> int:
    """The Mercia local concept id of a WHO ICD-10 chapter, block, category or subcategory."""
    code = code.strip().upper()
    if match := _CODE.match(code):
        letter, number, d1, d2 = match.groups()
        tail = 0 if d1 is None else (int(d1) + 1) * 100 + (0 if d2 is None else int(d2) + 1)
        return _CODE_OFFSET + (ord(letter) - 65) * 1_000_000 + int(number) * 10_000 + tail
    if match := _BLOCK.match(code):
        l1, n1, l2, n2 = match.groups()
        start, end = (ord(l1) - 65) * 100 + int(n1), (ord(l2) - 65) * 100 + int(n2)
        return _BLOCK_OFFSET + start * 2_600 + end
    if code and set(code) <= set(_ROMAN) and 1 <= _roman_to_int(code) <= 99:
        return _CHAPTER_OFFSET + _roman_to_int(code)
    raise ValueError(f"not a WHO ICD-10 chapter, block or code: {code!r}")
