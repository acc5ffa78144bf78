"""A throwaway pseudonymisation key outside the repository, for every test here."""

from mercia.privacy.testing import options, pseudonym_key  # noqa: F401  (pytest fixtures)
