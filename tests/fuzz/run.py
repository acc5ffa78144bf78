"""Run one fuzz target with atheris (coverage-guided, libFuzzer):

    python -m tests.fuzz.run TARGET --seconds 600 [--work DIR]

TARGET is one of tests.fuzz.targets.TARGETS.  The seeds in tests/fuzz/corpus/TARGET/ are read but
never written: new interesting inputs go to --work (a temporary directory by default), crashes to
``crash-*`` files there.  Exit status 0 means no finding in the time given.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import sys
import tempfile
from pathlib import Path

import atheris

READERS = ("mercia.ingest.fhir", "mercia.ingest.hl7v2", "mercia.ingest.csv", "mercia.ingest.genomics",
           "mercia.cohorts", "mercia.cohorts.compiler")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--work", default=None, help="directory for the growing corpus and crash files")
    args = parser.parse_args()
    with atheris.instrument_imports(include=["mercia"]):
        from tests.fuzz.targets import CORPUS, TARGETS, checked
        for module in READERS:  # the targets import their readers lazily: import them under instrumentation
            importlib.import_module(module)
    if args.target not in TARGETS:
        parser.error(f"unknown target {args.target}; one of {', '.join(TARGETS)}")
    work = args.work or tempfile.mkdtemp(prefix=f"fuzz-{args.target}-")
    Path(work).mkdir(parents=True, exist_ok=True)
    # libFuzzer reads the peak RSS, which Linux carries over from the parent through fork and exec:
    # started from a busy test worker, it begins high.  Allow 2 GB above where it began.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    libfuzzer = [sys.argv[0], f"-max_total_time={args.seconds}", f"-artifact_prefix={work}/",
                 f"-rss_limit_mb={inherited_mb + 2048}",
                 "-timeout=20", work, str(CORPUS / args.target)]
    atheris.Setup(libfuzzer, checked(args.target))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
