"""Streaming exports of a study: flat CSV, REDCap-compatible CSV and CDISC ODM 1.3.2 XML.

Fields the data dictionary flags as identifiers (REDCap's "Identifier?") are left out unless asked for
(``include_identifiers``), as REDCap's de-identified export does; only the study's data managers may ask,
and the export's audit entry says so.

Participants are read in batches (keyset on record id) and the EAV values are pivoted per batch in
SQL, so 20,000 participants x 200 fields pass through in bounded memory; ODM is written participant
by participant.  Records set aside as duplicate randomisations (the same human counted in another record)
are left out unless asked for on their own.  Every export is recorded in the audit log (who, what, how many).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any
from xml.sax.saxutils import escape

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lxml import etree

from mercia.governance import User
from mercia.privacy.spreadsheet import inert_text
from mercia.trials.crf.dictionary import Field, checkbox_code_column
from mercia.trials.crf.service import CrfService, FormStatus, Study, StudyRole

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
LOCATION = "LOC.mercia"
BATCH = 500


def _exported(alias: str, set_aside: bool) -> str:
    """The records an export holds: the participants, leaving out records set aside as duplicate
    randomisations of a human counted in another record; with ``set_aside``, only those."""
    return (f"{'' if set_aside else 'NOT '}EXISTS (SELECT 1 FROM mercia_crf_set_aside a WHERE "
            f"a.study_id = {alias}.study_id AND a.record_id = {alias}.record_id)")


def _record_batches(service: CrfService, study: Study, batch: int, set_aside: bool) -> Iterator[list[str]]:
    """Exported record ids in order, ``batch`` at a time: each batch is a range, so queries select it
    with ``BETWEEN first AND last`` (which uses zone maps) rather than a long IN list, and with
    ``_exported`` again, since a record of the other kind may fall inside the range."""
    last = ""
    while True:
        ids = [r[0] for r in service.db.store.query(
            f"SELECT record_id FROM mercia_crf_participant p WHERE study_id = ? AND record_id > ? "
            f"AND {_exported('p', set_aside)} ORDER BY record_id LIMIT {int(batch)}", [study.id, last])]
        if not ids:
            return
        yield ids
        last = ids[-1]


_LIVE = ("NOT EXISTS (SELECT 1 FROM mercia_crf_form f WHERE f.study_id = v.study_id AND f.record_id = v.record_id "
         "AND f.event_name = v.event_name AND f.form_name = v.form_name AND f.deleted)")


def _exported_fields(study: Study, include_identifiers: bool) -> list[Field]:
    """The dictionary's fields an export holds: identifier fields only when asked for (the record id always)."""
    d = study.dictionary
    return [f for f in d.fields if include_identifiers or not f.is_identifier or f.name == d.record_id_field]


def _columns(study: Study, include_identifiers: bool) -> list[tuple[Field, str]]:
    return [(f, c) for f in _exported_fields(study, include_identifiers) for c in f.export_columns()]


def _require_exporter(service: CrfService, actor: User, study: Study, include_identifiers: bool) -> None:
    """Data managers and monitors export; identifier fields only to data managers (a refusal is audited)."""
    if include_identifiers:
        service.require(actor, study, StudyRole.DATA_MANAGER)
    else:
        service.require(actor, study, StudyRole.DATA_MANAGER, StudyRole.MONITOR)


def _free_text(f: Field, column: str) -> bool:
    """Whether a column holds text typed by a person (a participant, on a survey): what a spreadsheet must
    not run as a formula.  Numbers, dates and choice codes are checked against the dictionary when saved."""
    return f.field_type in ("text", "notes") and _data_type(f, column) == "text"


def _wide(service: CrfService, study: Study, columns: list[str], free_text: np.ndarray, batch: int,
          set_aside: bool) -> Iterator[tuple[list[tuple[str, str, str]], np.ndarray]]:
    """Per batch of participants: the (record_id, arm, event) of each participant-event with data, in
    record and schedule order, and a text grid of their values (one column per export column), the
    ``free_text`` columns' values made inert for spreadsheets.
    The EAV rows are pivoted with Arrow and numpy, not row by row."""
    events = [e["event_name"] for e in service.events(study)]
    for ids in _record_batches(service, study, batch, set_aside):
        long = service.db.store.query_arrow(
            f"SELECT v.record_id, v.event_name, v.field_name, v.value FROM mercia_crf_value v "
            f"WHERE v.study_id = ? AND v.record_id BETWEEN ? AND ? AND {_LIVE} AND {_exported('v', set_aside)}",
            [study.id, ids[0], ids[-1]])
        if not long.num_rows:
            continue
        records, record_index = np.unique(long.column(0).to_numpy(zero_copy_only=False), return_inverse=True)
        event_index = pc.index_in(long.column(1), value_set=pa.array(events, pa.string())).fill_null(0).to_numpy()
        column_index = pc.index_in(long.column(2), value_set=pa.array(columns, pa.string())).fill_null(-1).to_numpy()
        keys, row_index = np.unique(record_index * len(events) + event_index, return_inverse=True)
        grid = np.full((len(keys), len(columns)), "", dtype=object)
        known = column_index >= 0
        values = pc.if_else(pa.array(known & free_text[column_index]), inert_text(long.column(3)), long.column(3))
        grid[row_index[known], column_index[known]] = values.to_numpy(zero_copy_only=False)[known]
        arms = dict(service.db.store.query(
            "SELECT record_id, arm FROM mercia_crf_participant WHERE study_id = ? AND record_id BETWEEN ? AND ?",
            [study.id, ids[0], ids[-1]]))
        yield [(records[k // len(events)], arms[records[k // len(events)]], events[k % len(events)]) for k in keys], grid


def _form_status(service: CrfService, study: Study, ids: list[str]) -> dict[tuple[str, str, str], str]:
    rows = service.db.store.query(
        f"SELECT record_id, event_name, form_name, status FROM mercia_crf_form WHERE study_id = ? AND NOT deleted "
        f"AND record_id IN ({', '.join('?' for _ in ids)})", [study.id, *ids])
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def write_csv(service: CrfService, actor: User, study_name: str, out: IO[str], redcap: bool = False,
              batch: int = BATCH, set_aside: bool = False, include_identifiers: bool = False) -> int:
    """One row per participant-event.  ``redcap``: REDCap's record export layout (``redcap_event_name``,
    checkbox columns ``field___code``, a ``<form>_complete`` status 0/1/2 after each form's fields).
    ``set_aside``: the records set aside as duplicate randomisations instead of the participants.
    ``include_identifiers``: the identifier fields too (data managers only)."""
    study = service.study(study_name)
    _require_exporter(service, actor, study, include_identifiers)
    columns = _columns(study, include_identifiers)
    names = [c for _, c in columns]
    writer = csv.writer(out, lineterminator="\n")
    if redcap:
        layout: list[tuple[str, Any]] = []
        for form in study.dictionary.forms:
            layout += [("value", names.index(c)) for f, c in columns if f.form == form and c != study.dictionary.record_id_field]
            layout.append(("status", form))
        header = [study.dictionary.record_id_field, "redcap_event_name"] + [
            names[key] if kind == "value" else f"{key}_complete" for kind, key in layout]
    else:
        header = [study.dictionary.record_id_field, "arm", "event"] + [
            c for c in names if c != study.dictionary.record_id_field]
    writer.writerow(header)
    record_column = names.index(study.dictionary.record_id_field)
    kept = [i for i in range(len(names)) if i != record_column]
    count = 0
    free_text = np.array([_free_text(f, c) for f, c in columns], dtype=bool)
    for keys, grid in _wide(service, study, names, free_text, batch, set_aside):
        if redcap:
            statuses = _form_status(service, study, sorted({k[0] for k in keys}))
            cells = np.empty((len(keys), len(layout)), dtype=object)
            for j, (kind, key) in enumerate(layout):
                cells[:, j] = grid[:, key] if kind == "value" else [
                    FormStatus(statuses[(r, e, key)]).code if (r, e, key) in statuses else "" for r, _, e in keys]
            lead = [[r, e] for r, _, e in keys]
        else:
            cells = grid[:, kept]
            lead = [list(k) for k in keys]
        writer.writerows(first + rest for first, rest in zip(lead, cells.tolist(), strict=True))
        count += len(keys)
    service.gov.audit.record(actor.username, "crf.export", f"crf:{study.name}",
                             format="redcap_csv" if redcap else "flat_csv", rows=count, set_aside=set_aside,
                             include_identifiers=include_identifiers)
    return count


def _data_type(f: Field, column: str) -> str:
    if f.field_type == "checkbox":
        return "integer"
    if f.field_type == "calc":
        return "float"
    if f.field_type == "slider":
        return "integer"
    return {"integer": "integer", "number": "float", "date_ymd": "date", "datetime_ymd": "datetime",
            "datetime_seconds_ymd": "datetime"}.get(f.validation, "text")


def _odm_value(f: Field, value: str) -> str:
    if f.validation in ("datetime_ymd", "datetime_seconds_ymd") and " " in value:
        day, time = value.split(" ", 1)
        return f"{day}T{time}{':00' if len(time) == 5 else ''}"
    return value


def _text(tag: str, text: str, **attrs: str) -> etree._Element:
    element = etree.Element(tag, attrs)
    element.text = text
    return element


def _translated(tag: str, text: str) -> etree._Element:
    wrapper = etree.Element(tag)
    wrapper.append(_text("TranslatedText", text, **{XML_LANG: "en"}))
    return wrapper


def _metadata(study: Study, events: list[dict[str, Any]], fields: list[Field]) -> etree._Element:
    d = study.dictionary
    mdv = etree.Element("MetaDataVersion", OID=f"MDV.{study.dictionary_version}",
                        Name=f"{study.name} data dictionary version {study.dictionary_version}")
    protocol = etree.SubElement(mdv, "Protocol")
    for i, e in enumerate(events, start=1):
        etree.SubElement(protocol, "StudyEventRef", StudyEventOID=f"SE.{e['event_name']}", OrderNumber=str(i),
                         Mandatory="No")
    for e in events:
        sed = etree.SubElement(mdv, "StudyEventDef", OID=f"SE.{e['event_name']}", Name=e["label"], Repeating="No",
                               Type="Scheduled")
        for i, form in enumerate(e["forms"], start=1):
            etree.SubElement(sed, "FormRef", FormOID=f"F.{form}", OrderNumber=str(i), Mandatory="No")
    for form in d.forms:
        fd = etree.SubElement(mdv, "FormDef", OID=f"F.{form}", Name=form, Repeating="No")
        etree.SubElement(fd, "ItemGroupRef", ItemGroupOID=f"IG.{form}", Mandatory="Yes")
    for form in d.forms:
        ig = etree.SubElement(mdv, "ItemGroupDef", OID=f"IG.{form}", Name=form, Repeating="No")
        for f in (f for f in fields if f.form == form):
            for column in f.export_columns():
                etree.SubElement(ig, "ItemRef", ItemOID=f"I.{column}", Mandatory="Yes" if f.is_required else "No")
    for f in fields:
        for column in f.export_columns():
            item = etree.SubElement(mdv, "ItemDef", OID=f"I.{column}", Name=column, DataType=_data_type(f, column))
            label = f.label if f.field_type != "checkbox" else f"{f.label}: {_checkbox_label(f, column)}"
            item.append(_translated("Question", label))
            if f.field_type in ("dropdown", "radio", "yesno", "truefalse"):
                etree.SubElement(item, "CodeListRef", CodeListOID=f"CL.{f.name}")
    for f in fields:
        if f.field_type in ("dropdown", "radio", "yesno", "truefalse"):
            code_list = etree.SubElement(mdv, "CodeList", OID=f"CL.{f.name}", Name=f.name, DataType="text")
            for code, label in f.choices.items():
                entry = etree.SubElement(code_list, "CodeListItem", CodedValue=code)
                entry.append(_translated("Decode", label))
    return mdv


def _checkbox_label(f: Field, column: str) -> str:
    return {f"{f.name}___{checkbox_code_column(code)}": label for code, label in f.choices.items()}[column]


def _admin(service: CrfService, study: Study, meanings: list[str]) -> etree._Element:
    admin = etree.Element("AdminData", StudyOID=f"S.{study.name}", nsmap={None: ODM_NS})
    store = service.db.store
    in_study, in_study_params = store.prefix_match("target", f"crf:{study.name}:")
    users = [r[0] for r in store.query(
        "SELECT DISTINCT saved_by FROM mercia_crf_value WHERE study_id = ? UNION "
        "SELECT DISTINCT signed_by FROM mercia_crf_form WHERE study_id = ? AND signed_by IS NOT NULL "
        "UNION SELECT DISTINCT actor FROM mercia_audit WHERE action IN ('crf.form.save', 'crf.form.delete') "
        f"AND {in_study} ORDER BY 1",
        [study.id, study.id, *in_study_params])]
    for username in users:
        user = service.gov.user_by_name(username)
        element = etree.SubElement(admin, "User", OID=f"U.{username}")
        element.append(_text("LoginName", username))
        element.append(_text("FullName", user.display_name if user else username))
    location = etree.SubElement(admin, "Location", OID=LOCATION, Name="Mercia", LocationType="Other")
    etree.SubElement(location, "MetaDataVersionRef", StudyOID=f"S.{study.name}",
                     MetaDataVersionOID=f"MDV.{study.dictionary_version}", EffectiveDate=datetime.now(UTC).date().isoformat())
    for i, meaning in enumerate(meanings, start=1):
        sd = etree.SubElement(admin, "SignatureDef", OID=f"SD.{i}", Methodology="Electronic")
        sd.append(_text("Meaning", meaning))
        sd.append(_text("LegalReason", "Electronic signature under 21 CFR Part 11; the signer re-entered their "
                                       "username and password"))
    return admin


def _attr(value: str) -> str:
    return escape(value, _ATTRIBUTE_ESCAPES)


_ATTRIBUTE_ESCAPES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _serialise(element: etree._Element) -> bytes:
    """A metadata subtree (its root made with the ODM default namespace) as UTF-8 XML."""
    return etree.tostring(_qualify(element), encoding="UTF-8", xml_declaration=False)


def write_odm(service: CrfService, actor: User, study_name: str, out: IO[bytes], batch: int = BATCH,
              history: bool = False, set_aside: bool = False, include_identifiers: bool = False) -> int:
    """CDISC ODM 1.3.2: metadata, users and signature meanings, and clinical data; returns ItemData count.

    A snapshot (the default) gives each item's current value with its last audit record (who, when,
    why, audit entry) and each form's signature.  ``history`` writes a transactional file instead:
    every change ever saved, in order, as ItemData with TransactionType Insert, Update or Remove and its
    own AuditRecord, and each soft deletion of a form as a FormData Remove with who, when and why.
    Either way everything is read in one transaction (repeatable read), so the file is one consistent
    view however long it takes to write.  ``set_aside``: the records set aside as duplicate randomisations
    instead of the participants.  ``include_identifiers``: the identifier fields too (data managers only);
    without it they are in neither the metadata nor the data nor the history.

    Metadata and administrative data are built with lxml; the clinical data, one participant at a time,
    are formatted directly with XML escaping (an lxml element per value was ten times slower at 4 million
    values).  Values never hold control characters (data entry refuses them), so escaping is enough."""
    study = service.study(study_name)
    _require_exporter(service, actor, study, include_identifiers)
    store = service.db.store
    with service.db.transaction():
        store.snapshot_reads()
        items = _write_odm(service, study, out, batch, history, set_aside, include_identifiers)
        service.gov.audit.record(actor.username, "crf.export", f"crf:{study.name}", format="odm_1.3.2",
                                 items=items, history=history, set_aside=set_aside,
                                 include_identifiers=include_identifiers)
    return items


def _write_odm(service: CrfService, study: Study, out: IO[bytes], batch: int, history: bool, set_aside: bool,
               include_identifiers: bool) -> int:
    events = service.events(study)
    event_order = {e["event_name"]: i for i, e in enumerate(events)}
    form_order = {f: i for i, f in enumerate(study.dictionary.forms)}
    columns = _columns(study, include_identifiers)
    field_order = {c: i for i, (_, c) in enumerate(columns)}
    by_column = {c: f for f, c in columns}
    left_out = [c for f, c in _columns(study, True) if c not in by_column]
    meanings = [r[0] for r in service.db.store.query(
        "SELECT DISTINCT signature_meaning FROM mercia_crf_form WHERE study_id = ? AND signature_meaning IS NOT NULL "
        "ORDER BY 1", [study.id])]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    study_el = etree.Element("Study", OID=f"S.{study.name}", nsmap={None: ODM_NS})
    globals_el = etree.SubElement(study_el, "GlobalVariables")
    globals_el.append(_text("StudyName", study.name))
    globals_el.append(_text("StudyDescription", study.title))
    globals_el.append(_text("ProtocolName", study.name))
    study_el.append(_metadata(study, events, _exported_fields(study, include_identifiers)))
    out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(f'<ODM xmlns="{ODM_NS}" FileType="{"Transactional" if history else "Snapshot"}" Granularity="All" FileOID="{_attr(f"mercia.{study.name}.{created}")}" '
              f'CreationDateTime="{created}" ODMVersion="1.3.2" SourceSystem="Mercia">'.encode())
    out.write(_serialise(study_el))
    out.write(_serialise(_admin(service, study, meanings)))
    out.write(f'<ClinicalData StudyOID="{_attr(f"S.{study.name}")}" '
              f'MetaDataVersionOID="MDV.{study.dictionary_version}">'.encode())
    items = 0
    for ids in _record_batches(service, study, batch, set_aside):
        if history:
            parts = []
            items += _history_rows(parts, _changes(service, study, ids, left_out), event_order, form_order, by_column)
            out.write("".join(parts).encode())
            continue
        rows = service.db.store.query(
            f"SELECT v.record_id, v.event_name, v.form_name, v.field_name, v.value, v.saved_by, v.saved_at, "
            f"v.reason, v.audit_seq FROM mercia_crf_value v WHERE v.study_id = ? AND v.value <> '' "
            f"AND v.record_id BETWEEN ? AND ? AND {_LIVE} AND {_exported('v', set_aside)}"
            + " AND v.field_name <> ?" * len(left_out), [study.id, ids[0], ids[-1], *left_out])
        rows.sort(key=lambda r: (r[0], event_order.get(r[1], 0), form_order.get(r[2], 0), field_order.get(r[3], 0)))
        forms = {(f["record_id"], f["event_name"], f["form_name"]): f for f in service.db.rows(
            "SELECT * FROM mercia_crf_form WHERE study_id = ? AND signed_at IS NOT NULL AND record_id BETWEEN ? AND ?",
            [study.id, ids[0], ids[-1]])}
        parts: list[str] = []
        items += _clinical_rows(parts, rows, forms, by_column, meanings)
        out.write("".join(parts).encode())
    out.write(b"</ClinicalData></ODM>\n")
    return items


def _changes(service: CrfService, study: Study, ids: list[str], left_out: list[str]
             ) -> dict[tuple[str, str, str], list[dict]]:
    """The saves and deletions of each form of a batch of participants, oldest first, from the audit log,
    whose targets are ``crf:<study>:<record>:<event>:<form>`` (study names and record ids hold no ':'); the
    changes of the ``left_out`` columns are dropped (a save that changed only those leaves an empty list)."""
    prefix = f"crf:{study.name}:"
    in_study, in_study_params = service.db.store.prefix_match("target", prefix)
    found: dict[tuple[str, str, str], list[dict]] = {}
    for seq, at, actor, action, target, detail in service.db.store.query(
            "SELECT seq, logged_at, actor, action, target, detail FROM mercia_audit WHERE action IN "
            f"('crf.form.save', 'crf.form.delete') AND {in_study} AND split_part(target, ':', 3) IN "
            f"({', '.join('?' for _ in ids)}) ORDER BY seq", [*in_study_params, *ids]):
        record, event, form = target[len(prefix):].split(":")
        entry = {"seq": seq, "at": at, "actor": actor, "action": action, **json.loads(detail)}
        if "changes" in entry:
            entry["changes"] = [c for c in entry["changes"] if c["field"] not in left_out]
        found.setdefault((record, event, form), []).append(entry)
    return found


def _audit_record(entry: dict) -> str:
    reason = entry.get("reason")
    return (f'<AuditRecord><UserRef UserOID="U.{_attr(entry["actor"])}"/><LocationRef LocationOID="{LOCATION}"/>'
            f"<DateTimeStamp>{entry['at']}</DateTimeStamp>"
            + (f"<ReasonForChange>{escape(reason)}</ReasonForChange>" if reason else "")
            + f"<SourceID>mercia_audit:{entry['seq']}</SourceID></AuditRecord>")


def _enter(parts: list[str], before: tuple[str | None, str | None], after: tuple[str, str], attrs: str = "") -> None:
    """Close the StudyEventData and SubjectData being left and open those entered, going from the
    (record, event) ``before`` to ``after``."""
    (subject, event), (record_id, event_name) = before, after
    if after != before and event is not None:
        parts.append("</StudyEventData>")
    if record_id != subject and subject is not None:
        parts.append("</SubjectData>")
    if record_id != subject:
        parts.append(f'<SubjectData SubjectKey="{_attr(record_id)}"{attrs}>')
    if after != before:
        parts.append(f'<StudyEventData StudyEventOID="SE.{event_name}"{attrs}>')


def _history_rows(parts: list[str], changes: dict[tuple[str, str, str], list[dict]], event_order: dict[str, int],
                  form_order: dict[str, int], by_column: dict[str, Field]) -> int:
    """Append transactional SubjectData: per form, every item change in order, then any deletion."""
    items = 0
    subject = event = None
    for record_id, event_name, form_name in sorted(changes, key=lambda k: (
            k[0], event_order.get(k[1], 0), form_order.get(k[2], 0))):
        _enter(parts, (subject, event), (record_id, event_name), ' TransactionType="Context"')
        subject, event = record_id, event_name
        entries = changes[(record_id, event_name, form_name)]
        saved = [(e, c) for e in entries if e["action"] == "crf.form.save" for c in e["changes"]]
        if saved:
            parts.append(f'<FormData FormOID="F.{form_name}" TransactionType="Context">'
                         f'<ItemGroupData ItemGroupOID="IG.{form_name}" TransactionType="Context">')
            for entry, change in saved:
                kind = "Insert" if change["old"] == "" else "Remove" if change["new"] == "" else "Update"
                field = by_column.get(change["field"])
                shown = _odm_value(field, change["new"]) if field is not None else change["new"]
                value = "" if kind == "Remove" else f' Value="{_attr(shown)}"'
                parts.append(f'<ItemData ItemOID="I.{_attr(change["field"])}" TransactionType="{kind}"{value}>'
                             f"{_audit_record(entry)}</ItemData>")
            parts.append("</ItemGroupData></FormData>")
            items += len(saved)
        for entry in entries:
            if entry["action"] == "crf.form.delete":
                parts.append(f'<FormData FormOID="F.{form_name}" TransactionType="Remove">{_audit_record(entry)}'
                             "</FormData>")
    if subject is not None:
        parts.append("</StudyEventData></SubjectData>")
    return items


def _clinical_rows(parts: list[str], rows: list[tuple], forms: dict, by_column: dict[str, Field],
                   meanings: list[str]) -> int:
    """Append SubjectData for rows sorted by record, event, form and field order."""
    subject = event = form = None
    for record_id, event_name, form_name, column, value, user, at, reason, seq in rows:
        if (record_id, event_name, form_name) != (subject, event, form):
            if form is not None:
                parts.append("</ItemGroupData></FormData>")
            _enter(parts, (subject, event), (record_id, event_name))
            parts.append(f'<FormData FormOID="F.{form_name}">')
            parts.append(_form_signature(forms.get((record_id, event_name, form_name)), meanings))
            parts.append(f'<ItemGroupData ItemGroupOID="IG.{form_name}">')
            subject, event, form = record_id, event_name, form_name
        field = by_column.get(column)
        shown = _odm_value(field, value) if field is not None else value
        parts.append(f'<ItemData ItemOID="I.{column}" Value="{_attr(shown)}">'
                     f"{_audit_record({'actor': user, 'at': at, 'reason': reason, 'seq': seq})}</ItemData>")
    if form is not None:
        parts.append("</ItemGroupData></FormData></StudyEventData></SubjectData>")
    return len(rows)


def _form_signature(state: dict | None, meanings: list[str]) -> str:
    """A live signature as ODM Signature; a voided one as an Annotation, so it stays visible."""
    if not state or not state["signed_at"]:
        return ""
    if state["signature_voided_at"]:
        note = (f"Signature by {state['signed_name']} ({state['signature_meaning']}) at {state['signed_at']} VOIDED at "
                f"{state['signature_voided_at']} by {state['signature_voided_by']}: {state['signature_void_reason']}")
        return f'<Annotation SeqNum="1"><Comment SponsorOrSite="Site">{escape(note)}</Comment></Annotation>'
    return (f'<Signature><UserRef UserOID="U.{_attr(state["signed_by"])}"/><LocationRef LocationOID="{LOCATION}"/>'
            f'<SignatureRef SignatureOID="SD.{meanings.index(state["signature_meaning"]) + 1}"/>'
            f"<DateTimeStamp>{state['signed_at']}</DateTimeStamp></Signature>")


def _qualify(element: etree._Element) -> etree._Element:
    """Put a subtree built with bare tags into the ODM namespace (the default namespace of the file)."""
    for node in element.iter():
        if isinstance(node.tag, str) and not node.tag.startswith("{"):
            node.tag = f"{{{ODM_NS}}}{node.tag}"
    return element
