"""Every ``IDVCANCEL_*`` setting refused from the environment is one line naming the
variable, what it got and what it accepts - and never a secret or a URL's password.

The settings are read from the environment here (not passed as arguments), so that the
path an operator's typo takes is the one tested: a JSON setting, for one, used to fail in
pydantic-settings' own parsing with an error naming neither variable nor value."""

from __future__ import annotations

from typing import get_origin

import pytest
from pydantic import ValidationError

from config.settings import Settings, describe_settings_error

#: Settings that take any text: nothing to refuse (paths, names, credentials).
FREE_TEXT = frozenset({
    "signing_key", "signing_key_password", "signing_certificate", "signing_cert_store",
    "idpass_token", "txcloud_api_key", "gu1_api_key", "jumio_api_token", "jumio_api_secret",
    "jumio_user_agent", "onespan_token", "onespan_tenant", "audit_archive_dir",
    "audit_signing_key", "audit_signing_key_password",
})

#: A bad value of each kind, with a word of what the message says is accepted.
BY_TYPE: dict[object, tuple[str, str]] = {
    int: ("abc", "valid integer"), float: ("abc", "valid number"),
    float | None: ("abc", "valid number"), dict: ("{bad", "JSON object")}
BY_NAME = {
    "redis_url": ("notaurl", "expected redis://"),
    "broker_url": ("http://rabbit:15672/", "expected amqp://"),
    "audit_origin": ("", "at least 1 character"),
    "audit_checkpoint_queue": ("", "at least 1 character"),
    **{name: ("api.example.com", "expected http(s)://")
       for name in Settings.model_fields if "base_url" in name},
}


def bad_value(name: str) -> tuple[str, str]:
    if name in BY_NAME:
        return BY_NAME[name]
    annotation = Settings.model_fields[name].annotation
    return BY_TYPE[dict if get_origin(annotation) is dict else annotation]


REFUSABLE = sorted(set(Settings.model_fields) - FREE_TEXT)


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one-line description of what ``Settings()`` refuses in ``env``."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_settings_error(caught.value)


def test_every_setting_is_either_checked_here_or_free_text() -> None:
    # Given the settings' fields
    # Then each one has a bad value below, or takes any text (a new setting must be added)
    for name in REFUSABLE:
        assert bad_value(name)
    assert set(Settings.model_fields) >= FREE_TEXT


@pytest.mark.parametrize("name", REFUSABLE)
def test_a_bad_value_is_one_line_naming_the_variable_the_value_and_what_it_accepts(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Given a bad value in the setting's environment variable
    value, accepts = bad_value(name)
    variable = f"IDVCANCEL_{name.upper()}"
    # When the settings are read
    line = refusal(monkeypatch, **{variable: value})
    # Then one line names it, shows what it got and says what it accepts
    assert "\n" not in line
    assert line.startswith(f"{variable}={value!r}: "), line
    assert accepts in line


@pytest.mark.parametrize("name", sorted(FREE_TEXT))
def test_a_free_text_setting_takes_any_text(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Given any text in a setting listed as free text
    monkeypatch.setenv(f"IDVCANCEL_{name.upper()}", "any text: ./é {not json}")
    # Then the settings are read (a check added to it belongs in BY_NAME above)
    assert Settings()


@pytest.mark.parametrize(("variable", "url", "shown"), [
    ("IDVCANCEL_REDIS_URL", "redis://:s3cret@cache:port/0", "redis://:***@cache:port/0"),
    ("IDVCANCEL_BROKER_URL", "amqp://ops:s3cret@rabbit:port//", "amqp://ops:***@rabbit:port//"),
    ("IDVCANCEL_BROKER_URL", "http://ops:s3cret@rabbit:15672/", "http://ops:***@rabbit:15672/"),
])
def test_a_refused_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch,
                                                variable: str, url: str, shown: str) -> None:
    # Given a bad URL that holds a password
    # When it is refused
    line = refusal(monkeypatch, **{variable: url})
    # Then the line shows the URL with the password masked
    assert "s3cret" not in line
    assert f"{variable}={shown!r}: " in line


def test_a_json_setting_names_the_entry_at_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given valid JSON with one bad entry, and one with a provider that does not exist
    wrong_number = refusal(monkeypatch, IDVCANCEL_RATE_LIMITS='{"txcloud": "fast"}')
    typo = refusal(monkeypatch, IDVCANCEL_RATE_LIMITS='{"txclod": 2}')
    # Then the entry is named, and the typo is refused with the providers known
    assert wrong_number.startswith("IDVCANCEL_RATE_LIMITS['txcloud']='fast': ")
    assert "unknown provider 'txclod'; known: idpass, txcloud, gu1, jumio, onespan" in typo


def test_every_refused_setting_is_named_in_the_same_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two bad settings at once
    line = refusal(monkeypatch, IDVCANCEL_RETRY_MAX_ATTEMPTS="abc",
                   IDVCANCEL_SWEEP_AFTER_SECONDS='{"gu1": 0}')
    # Then both are named, in one line
    assert "\n" not in line
    assert "IDVCANCEL_RETRY_MAX_ATTEMPTS='abc'" in line
    assert "IDVCANCEL_SWEEP_AFTER_SECONDS['gu1']=0: Input should be greater than 0" in line
