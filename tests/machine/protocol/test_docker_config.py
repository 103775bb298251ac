"""Docker registry credentials for the builder's spec (`dockerConfigJson`,
docs/protocol.md#spec-json)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import ConfigError
from kiln.machine.protocol import (
    DOCKER_CONFIG_ENV,
    DOCKER_HUB_SERVER,
    default_docker_config_path,
    load_docker_config_json,
    registry_of,
)
from support.machine import fake_credential_helper, helper_log

SECRET = "s3cr3t-p4ss"
BASIC = base64.b64encode(f"alice:{SECRET}".encode()).decode()
TOKEN = "identity-token-do-not-leak"


def write(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_keeps_only_registries_with_auth_or_identitytoken(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "auths": {
                "ghcr.io": {"auth": BASIC, "email": "a@example.com"},
                "registry.example": {"identitytoken": TOKEN},
                "empty.example": {},
                "blank.example": {"auth": "", "identitytoken": ""},
            },
            "credsStore": "desktop",
            "psFormat": "table",
        },
    )
    loaded = load_docker_config_json(path)
    assert loaded is not None
    assert json.loads(loaded) == {
        "auths": {"ghcr.io": {"auth": BASIC}, "registry.example": {"identitytoken": TOKEN}}
    }


def test_username_and_password_are_encoded_as_auth(tmp_path: Path) -> None:
    path = write(tmp_path, {"auths": {"r.example": {"username": "bob", "password": "pw"}}})
    loaded = load_docker_config_json(path)
    assert loaded is not None
    assert json.loads(loaded)["auths"]["r.example"] == {
        "auth": base64.b64encode(b"bob:pw").decode()
    }


def test_an_identitytoken_goes_alone(tmp_path: Path) -> None:
    # As Docker sends it: the token replaces the password, so `auth` is not sent beside it.
    path = write(tmp_path, {"auths": {"r.example": {"auth": BASIC, "identitytoken": TOKEN}}})
    loaded = load_docker_config_json(path)
    assert loaded is not None
    assert json.loads(loaded) == {"auths": {"r.example": {"identitytoken": TOKEN}}}


# --- credential helpers (credsStore, credHelpers) --------------------------------------------

PRIVATE = "registry.example.com"
HELPER_ANSWER = json.dumps({"ServerURL": PRIVATE, "Username": "bob", "Secret": SECRET})
BOB = base64.b64encode(f"bob:{SECRET}".encode()).decode()


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on PATH for fake docker-credential-* programs."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


def loaded_auths(path: Path, registries: list[str], warnings: list[str] | None = None) -> Any:
    sink = warnings if warnings is not None else []
    loaded = load_docker_config_json(path, registries=registries, warn=sink.append)
    return None if loaded is None else json.loads(loaded)["auths"]


def test_a_creds_store_is_asked_about_exactly_the_registries_the_build_needs(
    tmp_path: Path, helpers: Path
) -> None:
    fake_credential_helper(helpers, "desktop", {PRIVATE: HELPER_ANSWER})
    path = write(tmp_path, {"auths": {PRIVATE: {}, "other.example": {}}, "credsStore": "desktop"})
    assert loaded_auths(path, [PRIVATE, PRIVATE]) == {PRIVATE: {"auth": BOB}}
    assert helper_log(helpers, "desktop") == [PRIVATE]


def test_docker_hub_is_asked_by_its_index_address(tmp_path: Path, helpers: Path) -> None:
    fake_credential_helper(helpers, "desktop", {DOCKER_HUB_SERVER: HELPER_ANSWER})
    path = write(tmp_path, {"credsStore": "desktop"})
    images = ["python:3.12", "library/ubuntu", "docker.io/x/y", "localhost:5000/z", "Host/a"]
    registries = [registry_of(image) for image in images]
    assert registries == ["docker.io", "docker.io", "docker.io", "localhost:5000", "Host"]
    assert loaded_auths(path, registries) == {DOCKER_HUB_SERVER: {"auth": BOB}}
    assert helper_log(helpers, "desktop") == [DOCKER_HUB_SERVER, "localhost:5000", "Host"]


def test_cred_helpers_win_over_the_store_and_the_inline_entry(
    tmp_path: Path, helpers: Path
) -> None:
    fake_credential_helper(
        helpers, "gcloud", {"gcr.io": json.dumps({"Username": "<token>", "Secret": TOKEN})}
    )
    fake_credential_helper(helpers, "desktop", {PRIVATE: HELPER_ANSWER})
    config = {
        "auths": {"gcr.io": {"auth": BASIC}, "plain.example": {"auth": BASIC}},
        "credsStore": "desktop",
        "credHelpers": {"gcr.io": "gcloud"},
    }
    auths = loaded_auths(write(tmp_path, config), ["gcr.io", PRIVATE])
    assert auths == {
        "gcr.io": {"identitytoken": TOKEN},
        PRIVATE: {"auth": BOB},
        "plain.example": {"auth": BASIC},
    }
    assert helper_log(helpers, "gcloud") == ["gcr.io"]
    assert helper_log(helpers, "desktop") == [PRIVATE]


def test_a_helper_without_credentials_for_the_registry_is_no_warning(
    tmp_path: Path, helpers: Path
) -> None:
    fake_credential_helper(helpers, "desktop", {})
    warnings: list[str] = []
    assert loaded_auths(write(tmp_path, {"credsStore": "desktop"}), [PRIVATE], warnings) is None
    assert warnings == []


@pytest.mark.parametrize(
    ("install", "reason"),
    [
        (
            lambda d: fake_credential_helper(d, "desktop", {}, fail_with="keychain locked"),
            "keychain locked",
        ),
        (lambda d: fake_credential_helper(d, "desktop", {PRIVATE: "not json"}), "not JSON"),
        (
            lambda d: fake_credential_helper(d, "desktop", {PRIVATE: '{"Username": "bob"}'}),
            "no Username",
        ),
        (lambda d: None, "not on PATH"),
    ],
    ids=["fails", "garbage", "no-secret", "missing"],
)
def test_a_failing_helper_is_a_warning_naming_the_registry(
    tmp_path: Path, helpers: Path, install: Any, reason: str
) -> None:
    install(helpers)
    config = {"auths": {"plain.example": {"auth": BASIC}}, "credsStore": "desktop"}
    warnings: list[str] = []
    auths = loaded_auths(write(tmp_path, config), [PRIVATE], warnings)
    assert auths == {"plain.example": {"auth": BASIC}}
    assert len(warnings) == 1
    assert PRIVATE in warnings[0] and "docker-credential-desktop" in warnings[0]
    assert reason in warnings[0] and f"docker login {PRIVATE}" in warnings[0]
    assert SECRET not in warnings[0]


def test_output_is_compact_and_deterministic(tmp_path: Path) -> None:
    path = write(tmp_path, {"auths": {"z.example": {"auth": BASIC}, "a.example": {"auth": BASIC}}})
    loaded = load_docker_config_json(path)
    assert (
        loaded
        == f'{{"auths":{{"a.example":{{"auth":"{BASIC}"}},"z.example":{{"auth":"{BASIC}"}}}}}}'
    )


@pytest.mark.parametrize("config", [{}, {"auths": {}}, {"auths": {"r": {"email": "x"}}}])
def test_no_credentials_means_none(tmp_path: Path, config: Any) -> None:
    assert load_docker_config_json(write(tmp_path, config)) is None


def test_missing_file_means_none(tmp_path: Path) -> None:
    assert load_docker_config_json(tmp_path / "nope" / "config.json") is None


def test_default_path_honours_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DOCKER_CONFIG_ENV, str(tmp_path))
    assert default_docker_config_path() == tmp_path / "config.json"
    write(tmp_path, {"auths": {"r.example": {"identitytoken": TOKEN}}})
    assert load_docker_config_json() is not None


def test_default_path_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DOCKER_CONFIG_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_docker_config_path() == tmp_path / ".docker" / "config.json"
    assert load_docker_config_json() is None


def _assert_no_secret(error: ConfigError) -> None:
    shown = error.display() + repr(error.args)
    for secret in (SECRET, BASIC, TOKEN, "alice"):
        assert secret not in shown
    # a chained library exception could carry a piece of the file into a traceback
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (f'{{"auths": {{"r": {{"auth": "{BASIC}", "identitytoken": "{TOKEN}"', "invalid JSON"),
        (f'["{BASIC}", "{TOKEN}"]', "top level is not an object"),
        (f'{{"auths": ["{BASIC}"], "x": "{TOKEN}"}}', '"auths" is not an object'),
        (f'{{"auths": {{"r.example": "{BASIC}"}}}}', "'r.example' is not an object"),
        (f'{{"auths": {{"r.example": {{"auth": "{SECRET}"}}}}}}', "not base64 of user:password"),
    ],
)
def test_invalid_config_is_a_config_error_without_credentials(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_docker_config_json(path)
    assert str(caught.value).startswith(f"Failed to load Docker config: {path}")
    assert reason in str(caught.value)
    assert caught.value.hint
    _assert_no_secret(caught.value)


def test_undecodable_file_is_a_config_error_without_credentials(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"auths": {"r": {"auth": "' + BASIC.encode() + b'\xff"}}}')
    with pytest.raises(ConfigError, match="not valid UTF-8") as caught:
        load_docker_config_json(path)
    _assert_no_secret(caught.value)


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    # a directory where the file should be: reading it fails with an OS error
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match="Failed to load Docker config"):
        load_docker_config_json(tmp_path / "config.json")


def test_non_string_identitytoken_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, {"auths": {"r.example": {"identitytoken": 12345}}})
    assert load_docker_config_json(path) is None
