"""Linkage quality against a ground truth, and simulated demographics to measure it on.

Pairwise precision and recall: among all pairs of records put in the same person by linkage,
the share that truly are one person (precision); among all true same-person pairs, the share
that linkage joined (recall).  Computed from cluster sizes, so it is linear in records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Quality:
    precision: float
    recall: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int


def pairwise_quality(predicted: np.ndarray | list, truth: np.ndarray | list) -> Quality:
    con = duckdb.connect()
    con.register("labels", pa.table({"p": pa.array(np.asarray(predicted)), "t": pa.array(np.asarray(truth))}))
    pairs = "sum(n * (n - 1) / 2)"
    predicted_pairs = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY p)").fetchall()[0][0]
    true_pairs = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY t)").fetchall()[0][0]
    correct = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY p, t)").fetchall()[0][0]
    return Quality(precision=float(correct / predicted_pairs) if predicted_pairs else 1.0,
                   recall=float(correct / true_pairs) if true_pairs else 1.0,
                   true_pairs=int(true_pairs), predicted_pairs=int(predicted_pairs), correct_pairs=int(correct))


_FORENAMES = ("OLIVIA AMELIA ISLA AVA MIA IVY LILY ISABELLA ROSIE SOPHIA GRACE FREYA EVIE POPPY ELLA WILLOW ARIA "
              "EMILY SIENNA MAYA NOAH MUHAMMAD GEORGE OLIVER LEO ARTHUR OSCAR THEO HENRY ARCHIE JACK FREDDIE "
              "CHARLIE FINLEY TOMMY ISAAC ALFIE LUCA HARRY EDWARD SAMUEL JOSHUA DANIEL THOMAS JAMES WILLIAM "
              "PRIYA AISHA FATIMA RAJ AMIR SANJAY DEEPA ZARA IBRAHIM YUSUF HANNAH CHLOE RUBY JESSICA").split()
_SURNAMES = ("SMITH JONES TAYLOR BROWN WILLIAMS WILSON JOHNSON DAVIES PATEL WRIGHT ROBINSON WOOD THOMPSON EVANS "
             "WALKER WHITE ROBERTS GREEN HALL THOMAS CLARKE JACKSON WRIGHTSON HUGHES EDWARDS LEWIS HILL KHAN "
             "HARRIS MARTIN COOPER KING LEE MORRIS ALLEN MOORE CLARK SCOTT YOUNG WATSON PHILLIPS BAKER TURNER "
             "PARKER COLLINS BENNETT COOK BELL SHAH AHMED HUSSAIN SINGH KAUR BEGUM ALI MISTRY CHAUHAN").split()


def simulated_demographics(persons: int, copies: int = 2, error_rate: float = 0.05, seed: int = 0,
                           batch_persons: int = 50_000) -> Iterator[pa.Table]:
    """``copies`` records per person (as different organisations would hold them) with errors:
    NHS number missing or mistyped, a surname letter changed, day/month swapped, district changed.

    Yields one table per ``batch_persons`` persons (every copy of each, copy 0 first), so a
    million persons never sit in memory at once: the staged-person columns with identifiers (ready
    for ``Staged.persons.add_table``), ``copy`` and ``true_person``.  Vectorised: a million persons
    in seconds."""
    for start in range(0, persons, batch_persons):
        yield _simulated_batch(np.arange(start, min(start + batch_persons, persons)), copies, error_rate, seed)


def _simulated_batch(person: np.ndarray, copies: int, error_rate: float, seed: int) -> pa.Table:
    n = len(person)
    rng = np.random.default_rng([seed, int(person[0])])
    given = rng.choice(np.array(_FORENAMES), n)
    family = np.char.add(rng.choice(np.array(_SURNAMES), n),
                         np.where(rng.random(n) < 0.5, "", rng.choice(np.array(list("ABDEGHKLMNRST")), n)))
    birth = np.datetime64("1930-01-01") + rng.integers(0, 90 * 365, n).astype("timedelta64[D]")
    sex = rng.choice(np.array(["male", "female"]), n)
    district = rng.integers(1, 99, n)
    nhs = _nhs_numbers(person)
    tables = []
    for copy in range(copies):
        err = rng.random((5, n)) < error_rate
        number = np.where(err[1], _mistyped(nhs), nhs)
        place = np.where(err[4], rng.integers(1, 99, n), district)
        tables.append(pa.table({
            "record": _text(f"Patient/{copy}-", person), "record_hash": pa.array(np.full(n, "v1")),
            "person_ref": _text(f"{copy}-", person),
            "nhs_number": pa.array(np.char.zfill(number.astype(str), 10), mask=(number < 0) | err[0]),
            "family": pa.array(_letter_replaced(family, rng.integers(1, np.char.str_len(family)), err[2])),
            "given": pa.array(given),
            "birth_date": pa.array(np.datetime_as_string(np.where(err[3], _day_month_swapped(birth), birth))),
            "sex": pa.array(sex),
            "postcode": pc.binary_join_element_wise(_text("B", place), _text("", rng.integers(1, 9, n), "AA"), " "),
            "copy": pa.array(np.full(n, copy)), "true_person": pa.array(person)}))
    return pa.concat_tables(tables)


def _text(prefix: str, numbers: np.ndarray, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), suffix, "")


def _nhs_numbers(person: np.ndarray) -> np.ndarray:
    """A distinct ten-digit number per person (an affine permutation of the 400-499 million bases)
    with its modulus-11 check digit; -1 where the check digit would be 10 (no valid number)."""
    bases = 400_000_000 + (48_271 * person + 12_345) % 99_999_999
    digits = (bases[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    check = 11 - (digits @ np.arange(10, 1, -1)) % 11
    check[check == 11] = 0
    return np.where(check == 10, -1, bases * 10 + check)


def _mistyped(numbers: np.ndarray) -> np.ndarray:
    """The fifth digit of each number one higher (9 becomes 0), as a slip of the finger."""
    fifth = numbers // 100_000 % 10
    return np.where(numbers < 0, numbers, numbers + ((fifth + 1) % 10 - fifth) * 100_000)


def _letter_replaced(names: np.ndarray, positions: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``names`` with the letter at ``positions`` changed to X where ``where``."""
    names = names.copy()
    letters = names.view(np.uint32).reshape(len(names), -1)
    rows = np.flatnonzero(where)
    letters[rows, positions[rows]] = ord("X")
    return names


def _day_month_swapped(dates: np.ndarray) -> np.ndarray:
    """Day and month exchanged where the day could be a month (1-12); other dates unchanged."""
    years, months = dates.astype("datetime64[Y]"), dates.astype("datetime64[M]")
    month = (months - years.astype("datetime64[M]")).astype(int) + 1
    day = (dates - months.astype("datetime64[D]")).astype(int) + 1
    swapped = (years.astype("datetime64[M]") + (day - 1)).astype("datetime64[D]") + (month - 1)
    return np.where(day <= 12, swapped, dates)


def simulated_quality(store, pseudonymiser, orgs: Sequence[str], batches: Iterable[pa.Table]) -> Quality:
    """Pairwise quality of the store's person links when copy k of every simulated person in
    ``batches`` was loaded by ``orgs[k]``: the truth is joined on the same organisation-scoped
    pseudonyms the loader made."""
    keys = []
    for batch in batches:
        for copy, org in enumerate(orgs):
            part = batch.filter(pc.equal(batch.column("copy"), copy))
            keys.append(pa.table({"org": pa.array(np.full(part.num_rows, org)),
                                  "source_pseudonym": pseudonymiser.source_pseudonyms(org, part.column("person_ref")),
                                  "true_person": part.column("true_person")}))
    con = duckdb.connect()
    con.register("truth", pa.concat_tables(keys))
    con.register("links", store.query_arrow("SELECT org, source_pseudonym, person_id FROM mercia_person_link"))
    labels = con.execute("""SELECT l.person_id, t.true_person FROM links l
                        JOIN truth t USING (org, source_pseudonym)""").fetchnumpy()
    return pairwise_quality(labels["person_id"], labels["true_person"])


# How each region organisation type keys its patients in staging (see mercia.ingest readers).
PERSON_REF_FORMAT = {"gp": "{}", "acute": "{}", "pathology": "PID/{}", "rare_disease": "Subject/{}", "proms": "{}"}


def region_person_truth(store, region_dir, pseudonymiser) -> pa.Table:
    """(org, source_pseudonym, person_id, true_person_id) for every link record the region's
    crosswalk can identify; ``truth/crosswalk.parquet`` is read, never loaded into the store."""
    from pathlib import Path

    con = duckdb.connect()
    crosswalk = con.sql("SELECT person_id, org_code, org_type, local_id FROM read_parquet(?)",
                        params=[str(Path(region_dir) / "truth" / "crosswalk.parquet")]).to_arrow_table()
    refs = [PERSON_REF_FORMAT[t].format(local) for t, local in
            zip(crosswalk.column("org_type").to_pylist(), crosswalk.column("local_id").to_pylist())]
    orgs = crosswalk.column("org_code").to_pylist()
    pseudonyms = [None] * len(refs)
    for org in set(orgs):
        idx = [i for i, o in enumerate(orgs) if o == org]
        hashed = pseudonymiser.source_pseudonyms(org, [refs[i] for i in idx]).to_pylist()
        for i, h in zip(idx, hashed):
            pseudonyms[i] = h
    con.register("crosswalk", crosswalk.append_column("source_pseudonym", pa.array(pseudonyms, pa.string())))
    con.register("links", store.query_arrow("SELECT org, source_pseudonym, person_id FROM mercia_person_link"))
    return con.sql("""SELECT l.org, l.source_pseudonym, l.person_id, c.person_id AS true_person_id
                      FROM links l JOIN crosswalk c ON c.org_code = l.org AND c.source_pseudonym = l.source_pseudonym
                   """).to_arrow_table()


def region_linkage_quality(store, region_dir, pseudonymiser) -> Quality:
    truth = region_person_truth(store, region_dir, pseudonymiser)
    return pairwise_quality(truth.column("person_id").to_numpy(), truth.column("true_person_id").to_numpy())
