"""Who each organisation thinks a person is: local ids, the NHS number and demographics as sent,
with the identity errors real feeds carry (missing or mistyped NHS numbers, typos in names, dates
of birth and postcodes).  Errors are drawn per person and organisation, so linkage must fall back
on demographics exactly where real linkage does."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pyarrow as pa

from mercia.synth.population import AREAS, People, geography, names, postcodes

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def true_identities(rng: np.random.Generator, people: People) -> pa.Table:
    """``truth/person_identifiers``: the real identifiers of each person."""
    geo = geography()
    given, family = names(rng, people)
    postcode = postcodes(rng, people, geo)
    # People who changed practice moved house: the earlier practice knows the old postcode.
    old = postcodes(rng, people, geo)
    moved = people.change_date >= 0
    previous = pa.array(np.where(moved, old, None), pa.string())
    return pa.table({
        "person_id": people.person_id,
        "nhs_number": pa.array(people.nhs_number.astype(str)),
        "given_name": pa.array(given, pa.string()), "family_name": pa.array(family, pa.string()),
        "birth_date": pa.array(people.birth.astype(np.int32)).cast(pa.date32()),
        "sex": pa.array(np.where(people.female, "F", "M")),
        "postcode": pa.array(postcode), "postcode_district": pa.array(geo.districts[people.district]),
        "previous_postcode": previous,
        "city": pa.array(np.array([a[3] for a in AREAS], dtype=object)[people.area], pa.string()),
        "lsoa_code": pa.array(geo.lsoa_codes[people.lsoa]), "imd_decile": pa.array(people.imd, pa.int64()),
        "ethnic_category": pa.array(people.ethnic.astype(str)),
    })


def local_ids(org_type: str, org_code: np.ndarray, person_id: np.ndarray, seed: int) -> np.ndarray:
    """Each organisation's own patient number: a keyed bijection of the person id, so ids are
    stable, unique per organisation and carry no order."""
    key = (seed * 2_654_435_761 + 12_345) % 10_000_000
    scrambled = (person_id * 7_654_321 + key) % 10_000_000  # 7,654,321 is coprime with 10^7
    if org_type == "gp":  # a UUID, different at each practice the person was registered with
        return np.array([str(uuid.UUID(bytes=hashlib.md5(f"{seed}|{o}|{p}".encode()).digest(), version=4))
                         for o, p in zip(org_code.tolist(), person_id.tolist())], dtype=object)
    if org_type == "acute":
        return np.char.add(org_code.astype(str), np.char.zfill(scrambled.astype(str), 7)).astype(object)
    if org_type == "pathology":
        return np.char.add("L", np.char.zfill(((person_id * 3_456_789 + key) % 100_000_000).astype(str), 8)).astype(object)
    raise ValueError(f"no local id scheme for {org_type!r}")


def sent_identities(rng: np.random.Generator, truth: pa.Table, person_id: np.ndarray, org_code: np.ndarray,
                    org_type: str, local_id: np.ndarray | None, error_rate: float,
                    old_address: np.ndarray | None = None) -> pa.Table:
    """One row per (person, organisation): identity as that organisation writes it, with errors.
    ``old_address`` marks rows whose organisation last saw the person before they moved house."""
    idx = np.searchsorted(truth["person_id"].to_numpy(), person_id)
    n = len(person_id)
    nhs = truth["nhs_number"].to_numpy(zero_copy_only=False)[idx].astype(object)
    family = truth["family_name"].to_numpy(zero_copy_only=False)[idx].astype(object)
    birth = truth["birth_date"].to_numpy(zero_copy_only=False)[idx].astype("datetime64[D]").astype(str).astype(object)
    postcode = truth["postcode"].to_numpy(zero_copy_only=False)[idx].astype(object)
    if old_address is not None:
        previous = truth["previous_postcode"].to_numpy(zero_copy_only=False)[idx].astype(object)
        postcode = np.where(old_address, previous, postcode)
    u = rng.random((3, n))
    nhs_error = np.select([u[0] < error_rate, u[0] < 2 * error_rate], ["missing", "mistyped"], "none").astype(object)
    for i in np.flatnonzero(nhs_error == "mistyped"):
        nhs[i] = _mistype_digits(rng, nhs[i])
    nhs[nhs_error == "missing"] = None
    altered = u[1] < error_rate
    for i in np.flatnonzero(altered):
        what = rng.integers(0, 3)
        if what == 0:
            family[i] = _typo(rng, family[i])
        elif what == 1:
            birth[i] = _shift_birth(rng, birth[i])
        else:
            postcode[i] = postcode[i][:-2] + "".join(rng.choice(list("ABDEFGHJLNPQRSTUWXYZ"), 2))
    return pa.table({
        "person_id": pa.array(person_id, pa.int64()), "org_code": pa.array(org_code.astype(str)),
        "org_type": pa.array([org_type] * n, pa.string()),
        "local_id": pa.array(local_id, pa.string()) if local_id is not None else pa.nulls(n, pa.string()),
        "nhs_number_sent": pa.array(nhs, pa.string()), "nhs_number_error": pa.array(nhs_error, pa.string()),
        "demographics_altered": altered,
        "given_name": truth["given_name"].take(pa.array(idx)), "family_name": pa.array(family, pa.string()),
        "birth_date": pa.array(birth, pa.string()), "sex": truth["sex"].take(pa.array(idx)),
        "postcode": pa.array(postcode, pa.string()), "city": truth["city"].take(pa.array(idx)),
    })


def _mistype_digits(rng: np.random.Generator, number: str) -> str:
    digits = list(number)
    if rng.random() < 0.5:
        i = int(rng.integers(0, 9))
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
    if "".join(digits) == number:  # transposition of equal digits, or a one-digit slip
        i = int(rng.integers(3, 10))
        digits[i] = str((int(digits[i]) + int(rng.integers(1, 10))) % 10)
    return "".join(digits)


def _typo(rng: np.random.Generator, name: str) -> str:
    i = int(rng.integers(1, len(name))) if len(name) > 1 else 0
    return name[:i] + str(rng.choice(_LETTERS)) + name[i + 1:]


def _shift_birth(rng: np.random.Generator, iso: str) -> str:
    y, m, d = iso.split("-")
    if int(d) <= 12 and d != m:
        return f"{y}-{d}-{m}"  # day and month swapped
    return f"{y}-{m}-{max(1, int(d) - 1):02d}" if int(d) > 1 else f"{y}-{m}-02"
