"""The CONSORT 2010 flow diagram (Schulz et al. 2010, BMJ 340:c332), drawn from the screening log.

Enrolment: people assessed for eligibility (reached screening), excluded (not meeting criteria, declined,
other reasons); randomised, with the randomisations set aside as duplicate enrolments (one human randomised
twice: counted once, as the kept randomisation; ``mercia.trials.duplicates``) and those suspected but not yet
resolved; allocation per arm; withdrawn per arm; analysed (allocated minus withdrawn).  Counts are
disclosure-controlled when the diagram leaves the trial team (``external=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mercia.analytics.charts import TEXT, Chart, write_chart
from mercia.cdm.extensions import TRIAL_DUPLICATE_TABLE
from mercia.governance import User
from mercia.privacy.disclosure import ColumnSpec, DisclosurePolicy, Kind, PartitionSpec, StatTable, get_policy
from mercia.trials.register import TrialRegister, TrialRole

ASSESSED = ("screened", "consented", "randomised", "ineligible", "withdrawn")


def consort_counts(register: TrialRegister, actor: User, trial_id: str, *, external: bool = False,
                   policy: DisclosurePolicy | None = None) -> StatTable:
    """One row per diagram box (``box``, ``count``); controlled with the policy when ``external``."""
    trial = register.require(actor, trial_id, TrialRole.TRIAL_MANAGER, TrialRole.STATISTICIAN)
    statuses = register.db.rows("""
        SELECT person_id, MAX(CASE WHEN status IN ('screened','consented','randomised','ineligible','withdrawn')
                                   THEN 1 ELSE 0 END) AS assessed,
               MAX(CASE WHEN status = 'ineligible' THEN 1 ELSE 0 END) AS ineligible,
               MAX(CASE WHEN status = 'declined' THEN 1 ELSE 0 END) AS declined,
               MAX(CASE WHEN status = 'withdrawn' THEN 1 ELSE 0 END) AS withdrawn
        FROM mercia_trial_status WHERE trial_id = ? GROUP BY person_id""", [trial_id])
    arms = {r["person_id"]: r["arm"] for r in register.db.rows(
        "SELECT person_id, arm FROM mercia_trial_allocation WHERE trial_id = ?", [trial_id])}
    duplicates = register.db.rows(f"SELECT duplicate_id, person_id, status, kept FROM {TRIAL_DUPLICATE_TABLE} "
                                  "WHERE trial_id = ?", [trial_id])
    set_aside_count = sum(1 for r in duplicates if r["kept"] is not None and not r["kept"])
    open_rows = [r for r in duplicates if r["status"] == "open"]
    # each open duplicate's randomisations beyond one are the suspected duplicates
    suspected = len(open_rows) - len({r["duplicate_id"] for r in open_rows})
    # a person whose randomisation was set aside is the same human as the kept one: counted once, as that one
    set_aside = {r["person_id"] for r in duplicates if r["kept"] is not None and not r["kept"]} - set(arms)
    statuses = [r for r in statuses if r["person_id"] not in set_aside]
    assessed = {r["person_id"] for r in statuses if r["assessed"] or r["declined"]}
    ineligible = {r["person_id"] for r in statuses if r["ineligible"]} - set(arms)
    declined = {r["person_id"] for r in statuses if r["declined"]} - set(arms) - ineligible
    withdrawn = {r["person_id"] for r in statuses if r["withdrawn"]}
    # ``part_of``: the box a row's people are a share of, beside the other boxes of that share (a box
    # shown in the diagram as their total), so that disclosure control hides no box alone among them
    rows = [{"box": "identified", "part_of": "identified", "count": len(statuses)},
            {"box": "assessed", "part_of": "identified", "count": len(assessed)},
            {"box": "excluded", "part_of": "assessed", "count": len(assessed - set(arms))},
            {"box": "excluded_ineligible", "part_of": "excluded", "count": len(ineligible)},
            {"box": "excluded_declined", "part_of": "excluded", "count": len(declined)},
            {"box": "excluded_other", "part_of": "excluded",
             "count": len(assessed - set(arms) - ineligible - declined)},
            {"box": "randomised", "part_of": "assessed", "count": len(arms)},
            {"box": "duplicate_randomisations", "part_of": "duplicate_randomisations", "count": set_aside_count},
            {"box": "suspected_duplicate_randomisations", "part_of": "suspected_duplicate_randomisations",
             "count": suspected}]
    for arm in (a.code for a in trial.settings.arms):
        members = {p for p, a in arms.items() if a == arm}
        rows += [{"box": f"allocated_{arm}", "part_of": "randomised", "count": len(members)},
                 {"box": f"withdrawn_{arm}", "part_of": f"allocated_{arm}", "count": len(members & withdrawn)},
                 {"box": f"analysed_{arm}", "part_of": f"allocated_{arm}", "count": len(members - withdrawn)}]
    table = StatTable(name="consort", title=f"CONSORT flow: {trial.title}",
                      columns=[ColumnSpec(name="box", kind=Kind.LABEL), ColumnSpec(name="part_of", kind=Kind.LABEL),
                               ColumnSpec(name="count", kind=Kind.COUNT)],
                      rows=rows, partitions=[PartitionSpec(column="count", within=["part_of"], total="box")])
    return (policy or get_policy()).apply(table) if external else table


def _shown(table: StatTable) -> dict[str, str]:
    if table.redacted_marker is None:
        return {r["box"]: f"{r['count']:,}" for r in table.rows}
    return {r["box"]: r["count"] for r in table.display_rows()}


def consort_chart(table: StatTable, arms: list[str]) -> Chart:
    """The flow diagram as a chart of the one chart stack (``mercia.analytics.charts``)."""
    n = _shown(table)
    width = max(2, len(arms))
    fig = Figure(figsize=(3.2 * width + 2, 8))
    ax = fig.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.axis("off")
    box = {"boxstyle": "square,pad=0.5", "facecolor": "white", "edgecolor": TEXT}

    def put(x: float, y: float, text: str) -> None:
        ax.text(x, y, text, ha="center", va="center", fontsize=9, bbox=box, wrap=True)

    def arrow(x0: float, y0: float, x1: float, y1: float) -> None:
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": TEXT})

    put(3.5, 9.3, f"Assessed for eligibility (n={n['assessed']})\nof {n['identified']} identified")
    put(7.6, 8.0, f"Excluded (n={n['excluded']})\n  Not meeting criteria (n={n['excluded_ineligible']})\n"
                  f"  Declined to participate (n={n['excluded_declined']})\n  Other reasons (n={n['excluded_other']})")
    arrow(3.5, 8.9, 3.5, 7.0)
    arrow(3.5, 8.0, 5.9, 8.0)
    put(3.5, 6.6, f"Randomised (n={n['randomised']})\nDuplicate enrolments set aside "
                  f"(n={n['duplicate_randomisations']}; unresolved n={n['suspected_duplicate_randomisations']})")
    step = 9.0 / len(arms)
    for i, arm in enumerate(arms):
        x = step * (i + 0.5) + 0.5
        arrow(3.5, 6.25, x, 4.9)
        put(x, 4.5, f"Allocated to {arm}\n(n={n[f'allocated_{arm}']})")
        put(x, 2.9, f"Withdrew (n={n[f'withdrawn_{arm}']})")
        put(x, 1.3, f"Analysed (n={n[f'analysed_{arm}']})")
        arrow(x, 4.05, x, 3.2)
        arrow(x, 2.6, x, 1.6)
    for label, y in (("Enrolment", 9.3), ("Allocation", 4.5), ("Follow-up", 2.9), ("Analysis", 1.3)):
        ax.text(0.05, y, label, fontsize=9, fontweight="bold", va="center", rotation=90)
    return Chart("consort", table.title, "CONSORT 2010 flow: people assessed, excluded, randomised, allocated to "
                 "each arm, withdrawn and analysed.", fig)


def draw_consort(table: StatTable, arms: list[str], out: Path | str) -> list[Path]:
    """Write ``<out>.svg`` and ``<out>.png`` and return their paths."""
    return write_chart(consort_chart(table, arms), Path(out).with_suffix(""), ("svg", "png"), dpi=120)


def consort(register: TrialRegister, actor: User, trial_id: str, out: Path | str, *, external: bool = False
            ) -> dict[str, Any]:
    table = consort_counts(register, actor, trial_id, external=external)
    trial = register.trial(trial_id)
    paths = draw_consort(table, [a.code for a in trial.settings.arms], out)
    register.gov.audit.record(actor.username, "trial.consort", f"trial:{trial_id}", trial.project_id,
                              external=external)
    return {"counts": _shown(table), "files": [str(p) for p in paths]}
