"""Second-factor secrets are sealed at rest under a key outside the database, and secrets stored in
plaintext before sealing are sealed when governance starts."""

from __future__ import annotations

import pyotp
import pytest

from mercia.governance import Governance, GovernanceError, Role
from mercia.governance.sealed import PREFIX
from tests.governance.conftest import PW


@pytest.fixture(autouse=True)
def totp_key(monkeypatch):
    monkeypatch.setenv("MERCIA_TOTP_KEY", "k" * 40)


def test_enrolled_secret_is_sealed_and_still_verifies(gov):
    officer = gov.create_user("govo", "Gov Officer", PW, [(Role.GOVERNANCE_OFFICER, "")])
    secret, _ = gov.begin_enrolment(officer)
    stored = gov.db.scalar("SELECT secret FROM mercia_totp WHERE user_id = ?", [officer.id])
    assert stored.startswith(PREFIX) and secret not in stored
    assert len(gov.confirm_enrolment(officer, pyotp.TOTP(secret).now())) > 0


def test_plaintext_secrets_are_sealed_at_start_and_a_wrong_key_is_refused(gov, store, monkeypatch):
    officer = gov.create_user("govo", "Gov Officer", PW, [(Role.GOVERNANCE_OFFICER, "")])
    secret = pyotp.random_base32()
    gov.db.execute("INSERT INTO mercia_totp (user_id, secret, last_step, confirmed_at) VALUES (?, ?, 0, ?)",
                   [officer.id, secret, "2026-01-01T00:00:00.000000Z"])  # as stored before sealing
    restarted = Governance(store)
    stored = restarted.db.scalar("SELECT secret FROM mercia_totp WHERE user_id = ?", [officer.id])
    assert stored.startswith(PREFIX) and secret not in stored
    restarted.verify_second_factor(officer, pyotp.TOTP(secret).now())
    monkeypatch.setenv("MERCIA_TOTP_KEY", "another key of enough length 0123456789")
    with pytest.raises(GovernanceError, match="not the one these secrets were sealed with"):
        Governance(store).verify_second_factor(officer, "123456")
