"""The ``mercia`` command: a thin root that mounts each capability's own commands."""

from __future__ import annotations

import typer

from mercia import __version__

app = typer.Typer(name="mercia", help="Mercia: clinical research data platform (OMOP CDM).",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def version() -> None:
    """Print the Mercia version."""
    typer.echo(__version__)


# Each capability owns its command group in mercia/<capability>/cli.py.  Those modules import
# their heavy dependencies inside the commands so that `mercia --help` stays fast.

from mercia.cdm.cli import app as db_app  # noqa: E402

app.add_typer(db_app, name="db")
from mercia.vocab.cli import app as vocab_app  # noqa: E402

app.add_typer(vocab_app, name="vocab")
from mercia.raredisease.cli import app as raredisease_app  # noqa: E402

app.add_typer(raredisease_app, name="raredisease")
from mercia.analytics.cli import app as analytics_app  # noqa: E402

app.add_typer(analytics_app, name="analyse")
from mercia.cohorts.cli import app as cohort_app  # noqa: E402

app.add_typer(cohort_app, name="cohort")

from mercia.governance.cli import app as audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")
from mercia.synth.cli import app as synth_app  # noqa: E402

app.add_typer(synth_app, name="synth")
from mercia.ingest.cli import app as ingest_app  # noqa: E402
from mercia.privacy.cli import app as privacy_app  # noqa: E402
from mercia.quality.cli import app as dq_app  # noqa: E402

app.add_typer(ingest_app, name="ingest")
app.add_typer(privacy_app, name="privacy")
app.add_typer(dq_app, name="dq")

from mercia.demo import demo  # noqa: E402
from mercia.web.cli import serve  # noqa: E402

app.command("serve")(serve)
app.command("demo")(demo)
