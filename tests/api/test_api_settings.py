"""Settings: credentials and auth modes (docs/protocol.md#auth-modes), URL derivation
(docs/protocol.md#addresses), environment precedence."""

import pytest

from kiln.api import ApiSettings, Credentials
from kiln.errors import ConfigError
from kiln.testing import TEST_TOKEN

PAT_ENV = {
    "TENSORLAKE_PAT": TEST_TOKEN,
    "TENSORLAKE_ORGANIZATION_ID": "org-1",
    "TENSORLAKE_PROJECT_ID": "proj-1",
}


def settings_for(api_url: str, namespace: str = "default") -> ApiSettings:
    return ApiSettings.from_env({}, api_url=api_url, api_key=TEST_TOKEN, namespace=namespace)


# an API key drops the organization and project (docs/protocol.md#auth-modes)
def test_api_key_context_drops_org_and_project() -> None:
    env = {"TENSORLAKE_API_KEY": TEST_TOKEN, **PAT_ENV}
    settings = ApiSettings.from_env(env)
    assert settings.credentials.mode == "api_key"
    assert settings.credentials.organization_id is None
    assert settings.credentials.project_id is None
    assert f"{settings.platform_prefix}/sandbox-template-builds" == (
        "/platform/v1/sandbox-template-builds"
    )


# a PAT keeps them, in its routes (docs/protocol.md#auth-modes)
def test_pat_context_keeps_org_and_project() -> None:
    settings = ApiSettings.from_env(PAT_ENV)
    assert settings.credentials.mode == "pat"
    assert f"{settings.platform_prefix}/sandbox-template-builds" == (
        "/platform/v1/organizations/org-1/projects/proj-1/sandbox-template-builds"
    )
    assert settings.credentials.scope_headers == {
        "X-Forwarded-Organization-Id": "org-1",
        "X-Forwarded-Project-Id": "proj-1",
    }


@pytest.mark.parametrize("missing", ["TENSORLAKE_ORGANIZATION_ID", "TENSORLAKE_PROJECT_ID"])
def test_pat_without_scope_is_a_config_error(missing: str) -> None:
    env = {key: value for key, value in PAT_ENV.items() if key != missing}
    with pytest.raises(ConfigError, match="Organization ID and project ID are required") as info:
        ApiSettings.from_env(env)
    assert info.value.hint and missing in info.value.hint


def test_no_token_is_a_config_error_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="no Tensorlake credentials") as info:
        ApiSettings.from_env({"TENSORLAKE_API_KEY": "   "})
    assert info.value.hint and "TENSORLAKE_API_KEY" in info.value.hint


def test_api_key_has_no_scope_headers() -> None:
    assert Credentials(token=TEST_TOKEN, mode="api_key").scope_headers == {}


def test_arguments_win_over_environment() -> None:
    env = {
        "TENSORLAKE_API_URL": "https://api.env.example",
        "TENSORLAKE_API_KEY": "env-key",
        "INDEXIFY_NAMESPACE": "env-ns",
    }
    settings = ApiSettings.from_env(
        env, api_url="http://localhost:9000", api_key="arg-key", namespace="arg-ns"
    )
    assert settings.api_url == "http://localhost:9000"
    assert settings.credentials.token == "arg-key"
    assert settings.namespace == "arg-ns"


def test_pat_argument_beats_api_key_from_environment() -> None:
    env = {"TENSORLAKE_API_KEY": "env-key"}
    settings = ApiSettings.from_env(env, pat=TEST_TOKEN, organization_id="o", project_id="p")
    assert settings.credentials.mode == "pat"
    assert settings.credentials.token == TEST_TOKEN


def test_api_key_beats_pat_when_both_come_from_the_environment() -> None:
    settings = ApiSettings.from_env({"TENSORLAKE_API_KEY": "key", **PAT_ENV})
    assert settings.credentials.mode == "api_key"
    assert settings.credentials.token == "key"


def test_environment_defaults() -> None:
    settings = ApiSettings.from_env({"TENSORLAKE_API_KEY": TEST_TOKEN})
    assert settings.api_url == "https://api.tensorlake.ai"
    assert settings.namespace == "default"
    assert settings.proxy_url_override is None
    assert settings.user_agent.startswith("kiln/")


def test_proxy_override_is_trimmed_and_blank_means_unset() -> None:
    env = {"TENSORLAKE_API_KEY": TEST_TOKEN, "TENSORLAKE_SANDBOX_PROXY_URL": "  http://p:1  "}
    assert ApiSettings.from_env(env).proxy_url_override == "http://p:1"
    env["TENSORLAKE_SANDBOX_PROXY_URL"] = "   "
    assert ApiSettings.from_env(env).proxy_url_override is None


@pytest.mark.parametrize(
    ("api_url", "base", "path"),
    [
        ("http://localhost:8900", "http://localhost:8900", "/v1/namespaces/ns1/sandboxes"),
        ("http://127.0.0.1:8900/", "http://127.0.0.1:8900", "/v1/namespaces/ns1/sandboxes"),
        ("https://api.tensorlake.ai", "https://sandbox.tensorlake.ai", "/sandboxes"),
        ("http://api.eu.example.com:8443/v2", "http://sandbox.eu.example.com", "/sandboxes"),
        ("https://platform.example.com", "https://sandbox.tensorlake.ai", "/sandboxes"),
    ],
)
def test_lifecycle_url_derivation(api_url: str, base: str, path: str) -> None:
    settings = settings_for(api_url, namespace="ns1")
    assert settings.lifecycle_base_url == base
    assert settings.lifecycle_path == path


def test_trailing_slash_does_not_double_up_in_routes() -> None:
    settings = settings_for("https://api.tensorlake.ai/")
    assert settings.api_url == "https://api.tensorlake.ai"


@pytest.mark.parametrize("bad", ["not a url", "ftp://api.example.com", "api.tensorlake.ai"])
def test_unusable_api_url_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="not an absolute http"):
        settings_for(bad)


def test_token_never_in_repr() -> None:
    settings = ApiSettings.from_env(PAT_ENV)
    assert TEST_TOKEN not in repr(settings)
    assert TEST_TOKEN not in repr(settings.credentials)
    assert TEST_TOKEN not in str(settings.credentials)
