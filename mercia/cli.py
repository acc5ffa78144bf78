"""The ``mercia`` command: a thin root that mounts each capability's own commands.

Each capability owns its command group in ``mercia/<capability>/cli.py``; those modules import
their heavy dependencies inside the commands so that ``mercia --help`` stays fast.
"""

from __future__ import annotations

import typer

from mercia import __version__
from mercia.analytics.cli import app as analytics_app
from mercia.cdm.cli import app as db_app
from mercia.cohorts.cli import app as cohort_app
from mercia.demo import demo
from mercia.federation.cli import app as federation_app
from mercia.governance.cli import app as audit_app
from mercia.ingest.cli import app as ingest_app
from mercia.privacy.cli import app as privacy_app
from mercia.proms.cli import app as proms_app
from mercia.quality.cli import app as dq_app
from mercia.raredisease.cli import app as raredisease_app
from mercia.synth.cli import app as synth_app
from mercia.trials.cli import app as trials_app
from mercia.vocab.cli import app as vocab_app
from mercia.web.cli import serve

app = typer.Typer(name="mercia", help="Mercia: clinical research data platform (OMOP CDM).",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def version() -> None:
    """Print the Mercia version."""
    typer.echo(__version__)


app.command("demo")(demo)
app.command("serve")(serve)
app.add_typer(db_app, name="db")
app.add_typer(vocab_app, name="vocab")
app.add_typer(synth_app, name="synth")
app.add_typer(ingest_app, name="ingest")
app.add_typer(privacy_app, name="privacy")
app.add_typer(dq_app, name="dq")
app.add_typer(cohort_app, name="cohort")
app.add_typer(analytics_app, name="analyse")
app.add_typer(raredisease_app, name="raredisease")
app.add_typer(audit_app, name="audit")
app.add_typer(federation_app, name="federation")
app.add_typer(trials_app, name="trials")
app.add_typer(proms_app, name="proms")


if __name__ == "__main__":  # `python -m mercia.cli ...`, as the tests and docs run it
    app()
