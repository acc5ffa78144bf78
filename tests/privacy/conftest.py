"""A throwaway pseudonymisation key outside the repository, for every test here."""

from tests.pseudonym_fixtures import options, pseudonym_key  # noqa: F401  (pytest fixtures)
