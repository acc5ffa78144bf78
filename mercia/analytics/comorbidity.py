"""Charlson and Elixhauser comorbidity indices from ICD-10 source codes, computed in SQL.

Code lists (written here from the published tables, one category per line):
- Quan H, Sundararajan V, Halfon P, et al. Coding algorithms for defining comorbidities in ICD-9-CM
  and ICD-10 administrative data. Med Care 2005;43(11):1130-1139. Table 1 (enhanced ICD-10 Charlson)
  and Table 2 (ICD-10 Elixhauser).
Weights:
- Charlson ME, Pompei P, Ales KL, MacKenzie CR. A new method of classifying prognostic comorbidity in
  longitudinal studies. J Chronic Dis 1987;40(5):373-383 (the original weights).
- Quan H, Li B, Couris CM, et al. Updating and validating the Charlson comorbidity index and score for
  risk adjustment in hospital discharge abstracts using data from 6 countries. Am J Epidemiol
  2011;173(6):676-682, Table 3 (updated weights; maximum score 24; AIDS/HIV = 4).
- van Walraven C, Austin PC, Jennings A, Quan H, Forster AJ. A modification of the Elixhauser
  comorbidity measures into a point system for hospital administrative data. Med Care
  2009;47(6):626-633 (range -19 to 89).
Hierarchies (a milder category does not count when its severe form is present): mild vs moderate/
severe liver disease, diabetes without vs with complications, any malignancy vs metastatic tumour
(Charlson); diabetes, hypertension, solid tumour vs metastatic cancer (Elixhauser).

Two paths flag a category, and a person counts once either way:
1. Standard concepts (most OMOP data: GP records coded in SNOMED carry no ICD-10 at all): each
   category's ICD-10 codes are looked up as vocabulary concepts (ICD10, ICD10CM), followed through
   ``concept_relationship`` "Maps to" to their standard concepts, then to every descendant in
   ``concept_ancestor``; a condition whose ``condition_concept_id`` is in that set flags it.  This is
   the way OHDSI's FeatureExtraction builds its Charlson covariates from concept sets.
2. ICD-10 source codes, with dots removed, by 3- or 4-character prefix, from
   ``condition_source_value`` and from the code of ``condition_source_concept_id`` when that concept
   is in an ICD-10 vocabulary (hospital data keeps them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mercia.cdm import Store
from mercia.cdm.dialect import add_days, split_words

# category key | label | Charlson 1987 weight | Quan 2011 weight | ICD-10 codes (Quan 2005, Table 1)
_CHARLSON = """
mi | Myocardial infarction | 1 | 0 | I21.x, I22.x, I25.2
chf | Congestive heart failure | 1 | 2 | I09.9, I11.0, I13.0, I13.2, I25.5, I42.0, I42.5-I42.9, I43.x, I50.x, P29.0
pvd | Peripheral vascular disease | 1 | 0 | I70.x, I71.x, I73.1, I73.8, I73.9, I77.1, I79.0, I79.2, K55.1, K55.8, K55.9, Z95.8, Z95.9
cevd | Cerebrovascular disease | 1 | 0 | G45.x, G46.x, H34.0, I60.x-I69.x
dementia | Dementia | 1 | 2 | F00.x-F03.x, F05.1, G30.x, G31.1
cpd | Chronic pulmonary disease | 1 | 1 | I27.8, I27.9, J40.x-J47.x, J60.x-J67.x, J68.4, J70.1, J70.3
rheumd | Rheumatic disease | 1 | 1 | M05.x, M06.x, M31.5, M32.x-M34.x, M35.1, M35.3, M36.0
pud | Peptic ulcer disease | 1 | 0 | K25.x-K28.x
mld | Mild liver disease | 1 | 2 | B18.x, K70.0-K70.3, K70.9, K71.3-K71.5, K71.7, K73.x, K74.x, K76.0, K76.2-K76.4, K76.8, K76.9, Z94.4
diab | Diabetes without chronic complication | 1 | 0 | E10.0, E10.1, E10.6, E10.8, E10.9, E11.0, E11.1, E11.6, E11.8, E11.9, E12.0, E12.1, E12.6, E12.8, E12.9, E13.0, E13.1, E13.6, E13.8, E13.9, E14.0, E14.1, E14.6, E14.8, E14.9
diabwc | Diabetes with chronic complication | 2 | 1 | E10.2-E10.5, E10.7, E11.2-E11.5, E11.7, E12.2-E12.5, E12.7, E13.2-E13.5, E13.7, E14.2-E14.5, E14.7
hp | Hemiplegia or paraplegia | 2 | 2 | G04.1, G11.4, G80.1, G80.2, G81.x, G82.x, G83.0-G83.4, G83.9
rend | Renal disease | 2 | 1 | I12.0, I13.1, N03.2-N03.7, N05.2-N05.7, N18.x, N19.x, N25.0, Z49.0-Z49.2, Z94.0, Z99.2
canc | Any malignancy, incl. lymphoma and leukaemia, except skin | 2 | 2 | C00.x-C26.x, C30.x-C34.x, C37.x-C41.x, C43.x, C45.x-C58.x, C60.x-C76.x, C81.x-C85.x, C88.x, C90.x-C97.x
msld | Moderate or severe liver disease | 3 | 4 | I85.0, I85.9, I86.4, I98.2, K70.4, K71.1, K72.1, K72.9, K76.5, K76.6, K76.7
metacanc | Metastatic solid tumour | 6 | 6 | C77.x-C80.x
aids | AIDS/HIV | 6 | 4 | B20.x-B22.x, B24.x
"""

# category key | label | van Walraven 2009 weight | ICD-10 codes (Quan 2005, Table 2)
_ELIXHAUSER = """
chf | Congestive heart failure | 7 | I09.9, I11.0, I13.0, I13.2, I25.5, I42.0, I42.5-I42.9, I43.x, I50.x, P29.0
carit | Cardiac arrhythmias | 5 | I44.1-I44.3, I45.6, I45.9, I47.x-I49.x, R00.0, R00.1, R00.8, T82.1, Z45.0, Z95.0
valv | Valvular disease | -1 | A52.0, I05.x-I08.x, I09.1, I09.8, I34.x-I39.x, Q23.0-Q23.3, Z95.2-Z95.4
pcd | Pulmonary circulation disorders | 4 | I26.x, I27.x, I28.0, I28.8, I28.9
pvd | Peripheral vascular disorders | 2 | I70.x, I71.x, I73.1, I73.8, I73.9, I77.1, I79.0, I79.2, K55.1, K55.8, K55.9, Z95.8, Z95.9
hypunc | Hypertension, uncomplicated | 0 | I10.x
hypc | Hypertension, complicated | 0 | I11.x-I13.x, I15.x
para | Paralysis | 7 | G04.1, G11.4, G80.1, G80.2, G81.x, G82.x, G83.0-G83.4, G83.9
ond | Other neurological disorders | 6 | G10.x-G13.x, G20.x-G22.x, G25.4, G25.5, G31.2, G31.8, G31.9, G32.x, G35.x-G37.x, G40.x, G41.x, G93.1, G93.4, R47.0, R56.x
cpd | Chronic pulmonary disease | 3 | I27.8, I27.9, J40.x-J47.x, J60.x-J67.x, J68.4, J70.1, J70.3
diabunc | Diabetes, uncomplicated | 0 | E10.0, E10.1, E10.9, E11.0, E11.1, E11.9, E12.0, E12.1, E12.9, E13.0, E13.1, E13.9, E14.0, E14.1, E14.9
diabc | Diabetes, complicated | 0 | E10.2-E10.8, E11.2-E11.8, E12.2-E12.8, E13.2-E13.8, E14.2-E14.8
hypothy | Hypothyroidism | 0 | E00.x-E03.x, E89.0
rf | Renal failure | 5 | I12.0, I13.1, N18.x, N19.x, N25.0, Z49.0-Z49.2, Z94.0, Z99.2
ld | Liver disease | 11 | B18.x, I85.x, I86.4, I98.2, K70.x, K71.1, K71.3-K71.5, K71.7, K72.x-K74.x, K76.0, K76.2-K76.9, Z94.4
pud | Peptic ulcer disease excluding bleeding | 0 | K25.7, K25.9, K26.7, K26.9, K27.7, K27.9, K28.7, K28.9
aids | AIDS/HIV | 0 | B20.x-B22.x, B24.x
lymph | Lymphoma | 9 | C81.x-C85.x, C88.x, C96.x, C90.0, C90.2
metacanc | Metastatic cancer | 12 | C77.x-C80.x
solidtum | Solid tumour without metastasis | 4 | C00.x-C26.x, C30.x-C34.x, C37.x-C41.x, C43.x, C45.x-C58.x, C60.x-C76.x, C97.x
rheumd | Rheumatoid arthritis/collagen vascular diseases | 0 | L94.0, L94.1, L94.3, M05.x, M06.x, M08.x, M12.0, M12.3, M30.x, M31.0-M31.3, M32.x-M35.x, M45.x, M46.1, M46.8, M46.9
coag | Coagulopathy | 3 | D65-D68.x, D69.1, D69.3-D69.6
obes | Obesity | -4 | E66.x
wloss | Weight loss | 6 | E40.x-E46.x, R63.4, R64
fed | Fluid and electrolyte disorders | 5 | E22.2, E86.x, E87.x
blane | Blood loss anaemia | -2 | D50.0
dane | Deficiency anaemia | -2 | D50.8, D50.9, D51.x-D53.x
alcohol | Alcohol abuse | 0 | F10, E52, G62.1, I42.6, K29.2, K70.0, K70.3, K70.9, T51.x, Z50.2, Z71.4, Z72.1
drug | Drug abuse | -7 | F11.x-F16.x, F18.x, F19.x, Z71.5, Z72.2
psycho | Psychoses | 0 | F20.x, F22.x-F25.x, F28.x, F29.x, F30.2, F31.2, F31.5
depre | Depression | -3 | F20.4, F31.3-F31.5, F32.x, F33.x, F34.1, F41.2, F43.2
"""

# (milder, severe): the milder category scores nothing when the severe one is present.
CHARLSON_HIERARCHY = [("mld", "msld"), ("diab", "diabwc"), ("canc", "metacanc")]
ELIXHAUSER_HIERARCHY = [("diabunc", "diabc"), ("hypunc", "hypc"), ("solidtum", "metacanc")]


@dataclass(frozen=True)
class Category:
    key: str
    label: str
    weights: dict[str, int]  # scheme -> points
    prefixes: tuple[str, ...]  # ICD-10 prefixes without dots, 3 or 4 characters


_CODE = re.compile(r"^([A-Z])(\d\d)(?:\.(\d|x))?$")


def expand_codes(spec: str) -> tuple[str, ...]:
    """'I42.5-I42.9, I43.x, D65-D68.x' -> ('I425', ..., 'I429', 'I43', 'D65', ..., 'D68')."""
    out: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        low, _, high = item.partition("-")
        lo, hi = _CODE.match(low), _CODE.match(high or low)
        if not lo or not hi or lo.group(1) != hi.group(1):
            raise ValueError(f"bad ICD-10 code range {item!r}")
        letter = lo.group(1)
        if lo.group(3) in (None, "x") and hi.group(3) in (None, "x"):
            out += [f"{letter}{n:02d}" for n in range(int(lo.group(2)), int(hi.group(2)) + 1)]
        elif lo.group(2) == hi.group(2) and lo.group(3) != "x" and hi.group(3) not in (None, "x"):
            out += [f"{letter}{lo.group(2)}{d}" for d in range(int(lo.group(3)), int(hi.group(3)) + 1)]
        else:
            raise ValueError(f"bad ICD-10 code range {item!r}")
    return tuple(out)


def _parse(spec: str, schemes: list[str]) -> list[Category]:
    categories = []
    for line in spec.strip().splitlines():
        key, name, *weights, codes = (part.strip() for part in line.split("|"))
        categories.append(Category(key, name, dict(zip(schemes, map(int, weights))), expand_codes(codes)))
    return categories


CHARLSON = _parse(_CHARLSON, ["charlson", "quan2011"])
ELIXHAUSER = _parse(_ELIXHAUSER, ["van_walraven"])

# index name -> (categories, hierarchy, weight schemes it reports)
INDICES = {
    "charlson": (CHARLSON, CHARLSON_HIERARCHY, ["charlson", "quan2011"]),
    "elixhauser": (ELIXHAUSER, ELIXHAUSER_HIERARCHY, ["van_walraven"]),
}


def prefix_values_sql(store: Store) -> str:
    """All (index, category, prefix, prefix length) rows, written as one VALUES row per category with its
    prefixes space-separated and split into rows by the engine.  Binding a VALUES list of every prefix
    (~700 rows) cost DuckDB 14-20 ms a time, against ~2 ms for the 48 category rows and the split, and
    4 for the whole match on a small cohort; ``characterise`` makes it a temporary table once and
    ``flags_sql`` reads that."""
    rows = [f"('{index}', '{c.key}', '{' '.join(c.prefixes)}')"
            for index, (cats, _, _) in INDICES.items() for c in cats]
    return (f"SELECT comorbidity_index, category, prefix, LENGTH(prefix) AS prefix_len FROM ("
            f"SELECT comorbidity_index, category, {split_words(store, 'prefixes')} AS prefix FROM (VALUES "
            + ", ".join(rows) + ") AS v(comorbidity_index, category, prefixes)) AS w")


def standard_sets_sql(prefixes: str) -> str:
    """(comorbidity_index, category, concept_id): each category as a set of standard concepts, from its
    ICD-10 codes (the table ``prefixes`` holding ``prefix_values_sql``) mapped through "Maps to" and then
    every descendant (the mapped concept included)."""
    icd10 = "SELECT concept_id, UPPER(REPLACE(concept_code, '.', '')) AS code FROM concept WHERE vocabulary_id LIKE 'ICD10%'"
    return f"""
        WITH icd10 AS ({icd10}),
        matched AS (
            SELECT p.comorbidity_index, p.category, s.concept_id FROM icd10 s
            JOIN {prefixes} p ON p.prefix_len = 3 AND p.prefix = SUBSTR(s.code, 1, 3)
            UNION
            SELECT p.comorbidity_index, p.category, s.concept_id FROM icd10 s
            JOIN {prefixes} p ON p.prefix_len = 4 AND p.prefix = SUBSTR(s.code, 1, 4)),
        mapped AS (
            SELECT DISTINCT m.comorbidity_index, m.category, r.concept_id_2 AS concept_id FROM matched m
            JOIN concept_relationship r ON r.concept_id_1 = m.concept_id AND r.relationship_id = 'Maps to'
                                       AND r.invalid_reason IS NULL)
        SELECT comorbidity_index, category, concept_id FROM mapped
        UNION
        SELECT m.comorbidity_index, m.category, a.descendant_concept_id FROM mapped m
        JOIN concept_ancestor a ON a.ancestor_concept_id = m.concept_id"""


def flags_sql(store: Store, index_table: str, prefixes: str, lookback_days: int | None) -> str:
    """(person_id, comorbidity_index, category): conditions recorded on or before index, matched as
    standard concepts (path 1) or as ICD-10 source codes (path 2); ``prefixes`` is a table holding
    ``prefix_values_sql``."""
    window = ("" if lookback_days is None else
              f" AND co.condition_start_date >= {add_days(store, 'i.index_date', -int(lookback_days))}")
    codes = f"""
        SELECT i.person_id, UPPER(REPLACE(REPLACE(co.condition_source_value, '.', ''), ' ', '')) AS code
        FROM {index_table} i JOIN condition_occurrence co ON co.person_id = i.person_id
        WHERE co.condition_start_date <= i.index_date{window} AND co.condition_source_value IS NOT NULL
        UNION
        SELECT i.person_id, UPPER(REPLACE(c.concept_code, '.', '')) AS code
        FROM {index_table} i JOIN condition_occurrence co ON co.person_id = i.person_id
        JOIN concept c ON c.concept_id = co.condition_source_concept_id AND c.vocabulary_id LIKE 'ICD10%'
        WHERE co.condition_start_date <= i.index_date{window}"""
    return f"""
        WITH codes AS ({codes}), standard_sets AS ({standard_sets_sql(prefixes)})
        SELECT DISTINCT c.person_id, p.comorbidity_index, p.category
        FROM codes c JOIN {prefixes} p ON p.prefix_len = 3 AND p.prefix = SUBSTR(c.code, 1, 3)
        UNION
        SELECT DISTINCT c.person_id, p.comorbidity_index, p.category
        FROM codes c JOIN {prefixes} p ON p.prefix_len = 4 AND p.prefix = SUBSTR(c.code, 1, 4)
        UNION
        SELECT DISTINCT i.person_id, s.comorbidity_index, s.category
        FROM {index_table} i JOIN condition_occurrence co ON co.person_id = i.person_id
        JOIN standard_sets s ON s.concept_id = co.condition_concept_id
        WHERE co.condition_start_date <= i.index_date{window}"""


def scores_sql(flags_table: str, index_table: str) -> str:
    """One row per person of the index table with every index's score (0 without any code).  Each flag
    joins its category's weights (one VALUES row per category) unless the person also has the severe form
    that suppresses it; a pivot of one ``MAX(CASE ...)`` per category and scheme meant the same but cost
    DuckDB ~12 ms a time to plan, against ~3 ms for this."""
    schemes = [scheme for _, _, index_schemes in INDICES.values() for scheme in index_schemes]
    rows = []
    for index, (cats, hierarchy, index_schemes) in INDICES.items():
        severe_of = dict(hierarchy)
        for c in cats:
            weights = ", ".join(str(c.weights.get(scheme, 0)) for scheme in schemes)
            suppressed_by = f"'{severe_of[c.key]}'" if c.key in severe_of else "NULL"
            rows.append(f"('{index}', '{c.key}', {suppressed_by}, {weights})")
    scores = ", ".join(f"CAST(COALESCE(SUM(s.{scheme}), 0) AS INTEGER) AS {scheme}_score" for scheme in schemes)
    return f"""
        WITH weights AS (
            SELECT * FROM (VALUES {', '.join(rows)}) AS w(comorbidity_index, category, suppressed_by, {', '.join(schemes)})),
        scored AS (
            SELECT f.person_id, {', '.join(f'w.{scheme}' for scheme in schemes)}
            FROM {flags_table} f
            JOIN weights w ON w.comorbidity_index = f.comorbidity_index AND w.category = f.category
            LEFT JOIN {flags_table} severe ON severe.person_id = f.person_id
             AND severe.comorbidity_index = f.comorbidity_index AND severe.category = w.suppressed_by
            WHERE severe.person_id IS NULL)
        SELECT i.person_id, {scores}
        FROM {index_table} i LEFT JOIN scored s ON s.person_id = i.person_id
        GROUP BY i.person_id"""


SCORE_COLUMNS = {"charlson_score": "Charlson score (Charlson 1987 weights)",
                 "quan2011_score": "Charlson score (Quan 2011 weights)",
                 "van_walraven_score": "Elixhauser score (van Walraven weights)"}


def category_label(index: str, key: str) -> str:
    for c in INDICES[index][0]:
        if c.key == key:
            return c.label
    raise KeyError(f"{index} has no category {key!r}")
