"""Tokens are mixed case, and so are the tests of their redaction (issue 17).

Real API keys and PATs mix upper and lower case; a redaction that compares lower-cased text
would still pass every test whose token is lower case. Here a server echoes realistic tokens,
bare and as ``Bearer <token>``, and none may reach an error, an event, a log line, the store or
the emulator's request log.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from kiln.api import ApiSettings, LifecycleClient, create_http_client
from kiln.errors import ApiError
from kiln.machine import BuildOptions
from kiln.store import SQLiteStore, Store
from kiln.testing import BuildRun, EmulatorClient, run_build
from support.paths import HELLO

API_KEY = "tl_apiKey_Q7xV2mKp9RzL4nWc8TbY3hJd6FsG0aEu"
PAT = "tlpat_Hn5Gd2Kw8PzQ4mRtV7bX1cYj9LsF3eAu6NoW"
ORGANIZATION = "org_Redaction"
PROJECT = "proj_Redaction"
TOKENS = {"api-key": API_KEY, "pat": PAT}
# How a server may echo the token it was sent: alone, or with the header it came in.
ECHOES = {
    "bare": "invalid credential {token}",
    "bearer": "request had Authorization: Bearer {token}",
}
REDACTED = "[redacted]"
SANDBOX_CALL = "/v1/namespaces/default/sandboxes/sbx1"


def settings(kind: str) -> ApiSettings:
    url = "http://127.0.0.1:8900"
    if kind == "pat":
        return ApiSettings.from_env(
            {}, api_url=url, pat=PAT, organization_id=ORGANIZATION, project_id=PROJECT
        )
    return ApiSettings.from_env({}, api_url=url, api_key=API_KEY)


def assert_no_token(token: str, text: str) -> None:
    """Neither the token nor any case variant of it (a lower-cased copy is a leak too)."""
    assert token.lower() not in text.lower()


def test_the_tokens_are_mixed_case() -> None:
    for token in TOKENS.values():
        assert token != token.lower() and token != token.upper()


@pytest.mark.parametrize("echo", sorted(ECHOES))
@pytest.mark.parametrize("kind", sorted(TOKENS))
@pytest.mark.parametrize("status", [400, 401, 403, 409, 500, 502])
async def test_an_echoed_token_is_redacted_from_api_errors(
    status: int, kind: str, echo: str
) -> None:
    token = TOKENS[kind]
    body = ECHOES[echo].format(token=token)
    api = settings(kind)
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=body))
    client = LifecycleClient(api, create_http_client(api, transport=transport))
    with pytest.raises(ApiError) as info:
        await client.get_sandbox("sbx1")
    error = info.value
    assert REDACTED in error.body
    for text in (str(error), error.body, error.display(), repr(error), repr(error.args)):
        assert_no_token(token, text)


def build_options(kind: str, url: str) -> BuildOptions:
    if kind == "pat":
        return BuildOptions(api_url=url, organization_id=ORGANIZATION, project_id=PROJECT)
    return BuildOptions(api_url=url)


def stored_files(store: Store, tmp_path: Path) -> str:
    """The SQLite store's files as raw text (WAL included); nothing for the memory store."""
    if not isinstance(store, SQLiteStore):
        return ""
    return "".join(f.read_bytes().decode("latin-1") for f in tmp_path.rglob("builds.db*"))


async def everything_kept(run: BuildRun, store: Store) -> list[str]:
    record = await store.get(run.state.id)
    assert record is not None
    events = await store.events(run.state.id)
    return [
        json.dumps([event.to_dict() for event in run.events]),
        json.dumps(run.logs),
        json.dumps(run.requests),
        run.state.to_json(),
        json.dumps(record.data),
        json.dumps([event.data for event in events]),
        repr(run.error),
        str(run.error),
    ]


@pytest.mark.parametrize("echo", sorted(ECHOES))
@pytest.mark.parametrize("kind", sorted(TOKENS))
async def test_a_token_echoed_during_a_build_is_kept_out_of_everything(
    kiln_emulator: EmulatorClient, kiln_store: Store, tmp_path: Path, kind: str, echo: str
) -> None:
    token = TOKENS[kind]
    body = ECHOES[echo].format(token=token)
    # A transient echo (retried, with a log line) and a permanent one that fails the build (the
    # persisted error, the failure's event and log line).
    kiln_emulator.add_fault(
        {"status": 502, "body": body}, method="POST", path="sandbox-template-builds$"
    )
    kiln_emulator.add_fault({"status": 409, "body": body}, method="POST", path="/complete$")
    run = await run_build(
        kiln_emulator,
        HELLO,
        store=kiln_store,
        options=build_options(kind, kiln_emulator.url),
        api_key=API_KEY,
        pat=PAT if kind == "pat" else None,
    )
    assert run.outcome == "failed"
    assert REDACTED in str(run.error)
    # Both echoes reached kiln: the retry's log line and the failure carry them, redacted.
    assert any("retrying" in line and REDACTED in line for line in run.logs)
    assert kiln_emulator.live_sandboxes() == []
    for text in [*await everything_kept(run, kiln_store), stored_files(kiln_store, tmp_path)]:
        assert_no_token(token, text)


def test_the_emulator_request_log_keeps_no_mixed_case_token(
    kiln_emulator: EmulatorClient,
) -> None:
    with httpx.Client(base_url=kiln_emulator.url) as http:
        for token in TOKENS.values():
            http.get(
                "/v1/namespaces/default/sandboxes",
                params={"X-Amz-Security-Token": token, "Signature": token, "path": "/b"},
                headers={"Authorization": f"Bearer {token}"},
            )
    log = json.dumps(kiln_emulator.requests())
    assert '"path": "/b"' in log
    for token in TOKENS.values():
        assert_no_token(token, log)
