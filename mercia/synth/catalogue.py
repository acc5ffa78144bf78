"""The concept catalogue: every condition, drug, lab, vital sign and procedure the region simulates,
with its codes in each system the extracts use and its OMOP concept id.

Sources (facts and code lists only):
- OMOP concept ids and SNOMED/RxNorm/LOINC codes: the OHDSI standardised vocabularies (Athena).
  Ids marked ``G`` are present in the Eunomia GiBleed vocabulary; ``P`` appear in OHDSI
  PhenotypeLibrary v3.37.0 concept sets; ``A`` are standard Athena ids used widely in OHDSI
  tooling (e.g. FeatureExtraction's default covariates) but in neither of the former.
- ICD-10 (WHO 5th ed. as used by NHS England) and OPCS-4.10 codes: NHS Classifications (TRUD).
- OMOP concept 0 means no verified standard concept: the source code is still written.
Mercia-local concepts (PROMs) use ids from 2,000,000,001, below the HPO range of ``mercia.vocab.hpo``.
"""

from __future__ import annotations

from dataclasses import dataclass

# OMOP type, gender, race and visit concepts (Athena vocabularies "Type Concept", "Gender", "Race", "Visit").
EHR = 32817
LAB = 32856
EHR_PRESCRIPTION = 32838
PATIENT_SELF_REPORT = 32865
DEATH_CERTIFICATE = 32815
MALE, FEMALE = 8507, 8532
OUTPATIENT_VISIT, INPATIENT_VISIT, ER_VISIT = 9202, 9201, 9203
RACE_WHITE, RACE_ASIAN, RACE_BLACK = 8527, 8515, 8516


@dataclass(frozen=True)
class Concept:
    key: str
    name: str
    domain: str            # OMOP domain: Condition, Drug, Measurement, Observation, Procedure
    concept_id: int        # OMOP standard concept (0 = none verified)
    vocabulary: str        # vocabulary of ``code``
    code: str              # SNOMED CT / RxNorm / LOINC / local code
    icd10: str = ""        # conditions: ICD-10 code hospitals use
    opcs4: str = ""        # procedures: OPCS-4 code hospitals use
    unit: str = ""         # measurements: UCUM unit
    unit_concept_id: int = 0
    source: str = "A"      # G, P or A as in the module docstring


def _c(*args, **kw) -> Concept:
    return Concept(*args, **kw)


CONDITIONS = {c.key: c for c in [
    _c("hypertension", "Essential hypertension", "Condition", 320128, "SNOMED", "59621000", icd10="I10"),
    _c("t2dm", "Type 2 diabetes mellitus", "Condition", 201826, "SNOMED", "44054006", icd10="E11.9", source="P"),
    _c("asthma", "Asthma", "Condition", 317009, "SNOMED", "195967001", icd10="J45.9", source="G"),
    _c("childhood_asthma", "Childhood asthma", "Condition", 4051466, "SNOMED", "233678006", icd10="J45.9", source="G"),
    _c("copd", "Chronic obstructive lung disease", "Condition", 255573, "SNOMED", "13645005", icd10="J44.9", source="P"),
    _c("emphysema", "Pulmonary emphysema", "Condition", 261325, "SNOMED", "87433001", icd10="J43.9", source="G"),
    _c("ckd", "Chronic kidney disease", "Condition", 46271022, "SNOMED", "709044004", icd10="N18.9", source="P"),
    _c("af", "Atrial fibrillation", "Condition", 313217, "SNOMED", "49436004", icd10="I48.9", source="G"),
    _c("chd", "Coronary arteriosclerosis", "Condition", 317576, "SNOMED", "53741008", icd10="I25.1", source="G"),
    _c("mi", "Myocardial infarction", "Condition", 4329847, "SNOMED", "22298006", icd10="I21.9", source="G"),
    _c("hf", "Heart failure", "Condition", 316139, "SNOMED", "84114007", icd10="I50.9", source="P"),
    _c("depression", "Depressive disorder", "Condition", 440383, "SNOMED", "35489007", icd10="F32.9"),
    _c("breast_cancer", "Malignant tumor of breast", "Condition", 4112853, "SNOMED", "254837009", icd10="C50.9", source="P"),
    _c("prostate_cancer", "Malignant tumor of prostate", "Condition", 4163261, "SNOMED", "399068003", icd10="C61", source="P"),
    _c("colorectal_cancer", "Malignant tumor of colon", "Condition", 4180790, "SNOMED", "363406005", icd10="C18.9", source="P"),
    _c("lung_cancer", "Malignant tumor of lung", "Condition", 443388, "SNOMED", "363358000", icd10="C34.9", source="P"),
    _c("stroke", "Cerebrovascular accident", "Condition", 381316, "SNOMED", "230690007", icd10="I64", source="G"),
    _c("dementia", "Alzheimer's disease", "Condition", 378419, "SNOMED", "26929004", icd10="G30.9", source="G"),
    _c("hypothyroidism", "Hypothyroidism", "Condition", 140673, "SNOMED", "40930008", icd10="E03.9", source="G"),
    _c("osteoarthritis", "Osteoarthritis", "Condition", 80180, "SNOMED", "396275006", icd10="M19.9", source="G"),
    _c("epilepsy", "Epilepsy", "Condition", 380378, "SNOMED", "84757009", icd10="G40.9", source="G"),
    _c("rheumatoid_arthritis", "Rheumatoid arthritis", "Condition", 80809, "SNOMED", "69896004", icd10="M06.9", source="G"),
    _c("osteoporosis", "Osteoporosis", "Condition", 80502, "SNOMED", "64859006", icd10="M81.9", source="G"),
    # Acute and hospital conditions.
    _c("otitis_media", "Otitis media", "Condition", 372328, "SNOMED", "65363002", icd10="H66.9", source="G"),
    _c("viral_pharyngitis", "Acute viral pharyngitis", "Condition", 4112343, "SNOMED", "195662009", icd10="J02.9", source="G"),
    _c("strep_throat", "Streptococcal sore throat", "Condition", 28060, "SNOMED", "43878008", icd10="J02.0", source="G"),
    _c("acute_bronchitis", "Acute bronchitis", "Condition", 260139, "SNOMED", "10509002", icd10="J20.9", source="G"),
    _c("sinusitis", "Viral sinusitis", "Condition", 40481087, "SNOMED", "444814009", icd10="J01.9", source="G"),
    _c("cystitis", "Cystitis", "Condition", 195588, "SNOMED", "38822007", icd10="N30.9", source="G"),
    _c("sprain_ankle", "Sprain of ankle", "Condition", 81151, "SNOMED", "44465007", icd10="S93.4", source="G"),
    _c("fracture_forearm", "Fracture of forearm", "Condition", 4278672, "SNOMED", "65966004", icd10="S52.9", source="G"),
    _c("laceration_hand", "Laceration of hand", "Condition", 4113008, "SNOMED", "284549007", icd10="S61.9", source="G"),
    _c("concussion", "Concussion injury of brain", "Condition", 4001336, "SNOMED", "110030002", icd10="S06.0", source="G"),
    _c("pneumonia", "Pneumonia", "Condition", 255848, "SNOMED", "233604007", icd10="J18.9", source="G"),
    _c("hip_fracture", "Closed fracture of hip", "Condition", 4230399, "SNOMED", "359817006", icd10="S72.0", source="G"),
    _c("appendicitis", "Appendicitis", "Condition", 440448, "SNOMED", "74400008", icd10="K35.8", source="G"),
    _c("pregnant", "Pregnant", "Condition", 4299535, "SNOMED", "77386006", icd10="Z34.9", source="P"),
    _c("delivered", "Mother delivered", "Condition", 433260, "SNOMED", "289256000", icd10="O80", source="P"),
    _c("cardiac_arrest", "Cardiac arrest", "Condition", 321042, "SNOMED", "410429000", icd10="I46.9", source="G"),
]}

# RxNorm clinical drugs where GiBleed has one, else the RxNorm ingredient (cohorts select
# ingredients with descendants, so either matches).
DRUGS = {c.key: c for c in [
    _c("metformin", "Metformin", "Drug", 1503297, "RxNorm", "6809"),
    _c("gliclazide", "Gliclazide", "Drug", 19059796, "RxNorm", "4816"),
    _c("atorvastatin", "atorvastatin 80 MG Oral Tablet", "Drug", 1545959, "RxNorm", "259255", source="G"),
    _c("simvastatin", "Simvastatin 20 MG Oral Tablet", "Drug", 1539411, "RxNorm", "312961", source="G"),
    _c("ramipril", "Ramipril", "Drug", 1334456, "RxNorm", "35296"),
    _c("lisinopril", "Lisinopril", "Drug", 1308216, "RxNorm", "29046"),
    _c("amlodipine", "Amlodipine 5 MG Oral Tablet", "Drug", 1332419, "RxNorm", "197361", source="G"),
    _c("indapamide", "indapamide", "Drug", 978555, "RxNorm", "5764", source="P"),
    _c("bisoprolol", "Bisoprolol", "Drug", 1338005, "RxNorm", "19484"),
    _c("aspirin", "Aspirin", "Drug", 1112807, "RxNorm", "1191", source="G"),
    _c("clopidogrel", "clopidogrel 75 MG Oral Tablet", "Drug", 19075601, "RxNorm", "309362", source="G"),
    _c("apixaban", "apixaban", "Drug", 43013024, "RxNorm", "1364430"),
    _c("warfarin", "Warfarin Sodium 5 MG Oral Tablet", "Drug", 40163554, "RxNorm", "855332", source="G"),
    _c("furosemide", "Furosemide", "Drug", 956874, "RxNorm", "4603"),
    _c("salbutamol", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "Drug", 1154615, "RxNorm", "745679", source="G"),
    _c("fluticasone", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", "Drug", 40169216, "RxNorm", "895994", source="G"),
    _c("fluticasone_salmeterol", "60 ACTUAT Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler", "Drug", 40169281, "RxNorm", "896209", source="G"),
    _c("sertraline", "Sertraline", "Drug", 739138, "RxNorm", "36437"),
    _c("levothyroxine", "Levothyroxine Sodium 0.075 MG Oral Tablet", "Drug", 40174880, "RxNorm", "966222", source="G"),
    _c("alendronate", "Alendronic acid 10 MG Oral Tablet", "Drug", 40173590, "RxNorm", "904419", source="G"),
    _c("donepezil", "Donepezil hydrochloride 10 MG Oral Tablet", "Drug", 40223768, "RxNorm", "997223", source="G"),
    _c("carbamazepine", "Carbamazepine", "Drug", 740275, "RxNorm", "2002", source="G"),
    _c("methotrexate", "Methotrexate 10 MG Oral Tablet", "Drug", 19007333, "RxNorm", "105586", source="G"),
    _c("amoxicillin", "Amoxicillin 500 MG Oral Tablet", "Drug", 19073188, "RxNorm", "308192", source="G"),
    _c("penicillin_v", "Penicillin V Potassium 250 MG Oral Tablet", "Drug", 19133873, "RxNorm", "834061", source="G"),
    _c("nitrofurantoin", "NITROFURANTOIN, MACROCRYSTALS 50 MG Oral Capsule", "Drug", 920334, "RxNorm", "311995", source="G"),
    _c("doxycycline", "Doxycycline Monohydrate 100 MG Oral Tablet", "Drug", 46233710, "RxNorm", "1650142", source="G"),
    _c("paracetamol", "Acetaminophen 325 MG Oral Tablet", "Drug", 1127433, "RxNorm", "313782", source="G"),
]}

# Laboratory tests (from pathology) and vital signs (recorded by the GP).
MEASUREMENTS = {c.key: c for c in [
    _c("hba1c", "Hemoglobin A1c/Hemoglobin.total in Blood", "Measurement", 3004410, "LOINC", "4548-4", unit="mmol/mol"),
    _c("egfr", "Glomerular filtration rate/1.73 sq M.predicted", "Measurement", 3049187, "LOINC", "62238-1", unit="mL/min/{1.73_m2}"),
    _c("creatinine", "Creatinine serum/plasma", "Measurement", 3016723, "LOINC", "2160-0", unit="umol/L", unit_concept_id=8749, source="G"),
    _c("cholesterol", "Cholesterol [Moles/volume] in Serum or Plasma", "Measurement", 3027114, "LOINC", "2093-3", unit="mmol/L", unit_concept_id=8753),
    _c("hdl", "Cholesterol in HDL [Moles/volume] in Serum or Plasma", "Measurement", 3007070, "LOINC", "2085-9", unit="mmol/L", unit_concept_id=8753),
    _c("haemoglobin", "Hemoglobin", "Measurement", 3000963, "LOINC", "718-7", unit="g/L", unit_concept_id=8636, source="G"),
    _c("wbc", "White Blood cell (WBC) count (leukocyte)", "Measurement", 3010813, "LOINC", "26464-8", unit="10*9/L", source="G"),
    _c("platelets", "Platelet count", "Measurement", 3007461, "LOINC", "26515-7", unit="10*9/L", source="G"),
    _c("mcv", "MCV", "Measurement", 3024731, "LOINC", "30428-7", unit="fL", unit_concept_id=8583, source="G"),
    _c("tsh", "Thyrotropin [Units/volume] in Serum or Plasma", "Measurement", 3009201, "LOINC", "3016-3", unit="m[IU]/L", source="G"),
    _c("sodium", "Sodium serum/plasma", "Measurement", 3019550, "LOINC", "2951-2", unit="mmol/L", unit_concept_id=8753, source="G"),
    _c("potassium", "Potassium serum/plasma", "Measurement", 3023103, "LOINC", "2823-3", unit="mmol/L", unit_concept_id=8753, source="G"),
    _c("systolic_bp", "Systolic blood pressure", "Measurement", 3004249, "LOINC", "8480-6", unit="mm[Hg]", unit_concept_id=8876),
    _c("diastolic_bp", "Diastolic blood pressure", "Measurement", 3012888, "LOINC", "8462-4", unit="mm[Hg]", unit_concept_id=8876),
    _c("bmi", "Body mass index", "Measurement", 3038553, "LOINC", "39156-5", unit="kg/m2"),
]}
LAB_PANELS = {  # pathology order panel -> tests, with the panel's local code and name
    "HBA1C": ("Haemoglobin A1c", ["hba1c"]),
    "UE": ("Urea and electrolytes", ["sodium", "potassium", "creatinine", "egfr"]),
    "LIPID": ("Lipid profile", ["cholesterol", "hdl"]),
    "FBC": ("Full blood count", ["haemoglobin", "wbc", "platelets", "mcv"]),
    "TFT": ("Thyroid function", ["tsh"]),
}
VITALS = ("systolic_bp", "diastolic_bp", "bmi")

PROCEDURES = {c.key: c for c in [
    _c("pci", "Percutaneous coronary intervention", "Procedure", 4216130, "SNOMED", "415070008", opcs4="K75.1", source="G"),
    _c("cabg", "Coronary artery bypass graft", "Procedure", 4336464, "SNOMED", "232717009", opcs4="K40.1", source="G"),
    _c("appendicectomy", "Appendectomy", "Procedure", 4198190, "SNOMED", "80146002", opcs4="H01.9", source="G"),
    _c("knee_replacement", "Total knee replacement", "Procedure", 0, "SNOMED", "609588000", opcs4="W40.1"),
    _c("hip_replacement", "Total replacement of hip joint", "Procedure", 0, "SNOMED", "52734007", opcs4="W37.1"),
    _c("normal_delivery", "Normal delivery procedure", "Procedure", 0, "SNOMED", "48782003", opcs4="R24.9"),
    _c("caesarean", "Elective caesarean section", "Procedure", 0, "SNOMED", "177141003", opcs4="R17.9"),
    _c("ecg", "Electrocardiographic procedure", "Procedure", 4163951, "SNOMED", "29303009", source="G"),
    _c("spirometry", "Spirometry", "Procedure", 4133840, "SNOMED", "127783003", source="G"),
    _c("chest_xray", "Plain chest X-ray", "Procedure", 4163872, "SNOMED", "399208008", opcs4="U07.1", source="G"),
    _c("iud_insertion", "Insertion of intrauterine contraceptive device", "Procedure", 4275113, "SNOMED", "65200003", source="G"),
]}

PROMS = {c.key: c for c in [
    _c("eq5d5l_profile", "EQ-5D-5L health profile (5-digit)", "Observation", 2_000_000_001, "Mercia", "EQ5D5L"),
    _c("eq_vas", "EQ visual analogue scale", "Observation", 2_000_000_002, "Mercia", "EQVAS"),
    _c("oks", "Oxford Knee Score", "Observation", 2_000_000_003, "Mercia", "OKS"),
]}

ALL = {**CONDITIONS, **DRUGS, **MEASUREMENTS, **PROCEDURES, **PROMS}


def concept_rows() -> list[dict]:
    """CDM ``concept`` rows for every catalogue concept with a real id (plus the local PROMs ones)."""
    rows, seen = [], set()
    for c in ALL.values():
        if c.concept_id == 0 or c.concept_id in seen:
            continue
        seen.add(c.concept_id)
        rows.append({"concept_id": c.concept_id, "concept_name": c.name, "domain_id": c.domain,
                     "vocabulary_id": c.vocabulary, "concept_class_id": _concept_class(c),
                     "standard_concept": "S", "concept_code": c.code})
    return rows


# Broader SNOMED CT concepts (real OMOP ids) above catalogue conditions, so that "include descendants"
# has a hierarchy to follow in a synthetic region: parent (id, name, SNOMED code) -> child keys.
PARENTS = {
    (201820, "Diabetes mellitus", "73211009"): ["t2dm"],
    (443392, "Malignant neoplastic disease", "363346000"): ["breast_cancer", "prostate_cancer",
                                                            "colorectal_cancer", "lung_cancer"],
    (321588, "Heart disease", "56265001"): ["mi", "hf", "af", "chd", "cardiac_arrest"],
    (317009, "Asthma", "195967001"): ["childhood_asthma"],
    (255573, "Chronic obstructive lung disease", "13645005"): ["emphysema"],
}


# What clinicians type for catalogue concepts (SNOMED CT synonyms and LOINC short names in Athena's
# concept_synonym, and the abbreviations used in UK primary care): the search matches these too.
SYNONYMS = {
    "hypertension": ["High blood pressure", "Hypertensive disorder", "HTN"],
    "t2dm": ["Type II diabetes mellitus", "Diabetes mellitus type 2", "T2DM", "Non-insulin dependent diabetes"],
    "copd": ["Chronic obstructive pulmonary disease", "COPD"],
    "ckd": ["CKD", "Chronic renal disease"],
    "af": ["AF", "Auricular fibrillation"],
    "chd": ["Coronary heart disease", "Coronary artery disease", "CHD", "CAD"],
    "mi": ["Heart attack", "Myocardial infarct", "MI"],
    "hf": ["Cardiac failure", "HF"],
    "depression": ["Depression", "Depressive illness"],
    "breast_cancer": ["Breast cancer", "Cancer of breast", "Malignant neoplasm of breast"],
    "prostate_cancer": ["Prostate cancer", "Cancer of prostate", "Malignant neoplasm of prostate"],
    "colorectal_cancer": ["Colon cancer", "Cancer of colon", "Malignant neoplasm of colon"],
    "lung_cancer": ["Lung cancer", "Cancer of lung", "Malignant neoplasm of lung"],
    "stroke": ["Stroke", "CVA - cerebrovascular accident", "Cerebrovascular accident (stroke)"],
    "dementia": ["Alzheimer's dementia", "Alzheimer disease", "Dementia of the Alzheimer type"],
    "hypothyroidism": ["Underactive thyroid"],
    "hba1c": ["HbA1c", "Glycated haemoglobin", "Hemoglobin A1c", "Haemoglobin A1c"],
    "egfr": ["eGFR", "Estimated glomerular filtration rate"],
    "metformin": ["Metformin hydrochloride"],
    "salbutamol": ["Salbutamol inhaler"],
    "paracetamol": ["Paracetamol 325 mg tablet"],
}
PARENT_SYNONYMS = {443392: ["Cancer", "Malignant tumour", "Malignancy"], 201820: ["Diabetes", "DM"],
                   321588: ["Cardiac disease"]}


def vocabulary_rows() -> tuple[list[dict], list[tuple[int, int]], list[tuple[int, int, int]], list[tuple[int, str]]]:
    """What a synthetic region's vocabulary adds to the catalogue's concepts: the parent concepts and
    the ICD-10 codes hospitals use (non-standard, ids from ``mercia.vocab.icd10``) as concept rows;
    ICD-10 -> SNOMED "Maps to" pairs; ``concept_ancestor`` rows (ancestor, descendant, levels),
    a level-0 row per standard concept as OMOP has; and (concept, synonym) pairs."""
    from mercia.vocab.icd10 import icd10_concept_id

    extra, maps = [], []
    for (concept_id, name, code), _ in PARENTS.items():
        if concept_id not in {c.concept_id for c in ALL.values()}:
            extra.append({"concept_id": concept_id, "concept_name": name, "domain_id": "Condition",
                          "vocabulary_id": "SNOMED", "concept_class_id": "Clinical Finding",
                          "standard_concept": "S", "concept_code": code})
    mapped = set()
    for c in CONDITIONS.values():
        if c.icd10 and c.concept_id and c.icd10 not in mapped:
            mapped.add(c.icd10)
            icd = icd10_concept_id(c.icd10)
            extra.append({"concept_id": icd, "concept_name": f"{c.name} (ICD-10 {c.icd10})", "domain_id": "Condition",
                          "vocabulary_id": "ICD10", "concept_class_id": "ICD10 code", "standard_concept": None,
                          "concept_code": c.icd10})
            maps.append((icd, c.concept_id))
    standard = {r["concept_id"] for r in concept_rows()} | {r["concept_id"] for r in extra
                                                            if r["standard_concept"] == "S"}
    ancestors = [(cid, cid, 0) for cid in sorted(standard)]
    ancestors += [(parent[0], CONDITIONS[key].concept_id, 1) for parent, keys in PARENTS.items() for key in keys]
    synonyms = [(ALL[key].concept_id, name) for key, names in SYNONYMS.items() for name in names]
    synonyms += [(concept_id, name) for concept_id, names in PARENT_SYNONYMS.items() for name in names]
    return extra, maps, ancestors, synonyms


def _concept_class(c: Concept) -> str:
    """The Athena concept class of a catalogue concept (drugs: ingredient unless a dose is named)."""
    if c.domain == "Drug":
        return "Clinical Drug" if " MG" in c.name or "ACTUAT" in c.name else "Ingredient"
    return {"Condition": "Clinical Finding", "Measurement": "Lab Test" if c.key not in VITALS else
            "Clinical Observation", "Procedure": "Procedure"}.get(c.domain, "Undefined")
