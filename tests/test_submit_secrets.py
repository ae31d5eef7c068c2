"""components/common/secrets.py: the HF token is read at run time from Secret Manager (REST, loopback fake)."""

import pytest
from fakes.secret_manager import FakeSecretManager
from google.auth.credentials import AnonymousCredentials

from components.common.errors import UserError
from components.common.secrets import export_hf_token, read_secret, resolve_hf_token, secret_version_name

SECRET = "projects/test-project/secrets/hf-token"
TOKEN = "hf_" + "k7P" * 12


@pytest.fixture
def secret_manager():
    with FakeSecretManager({SECRET: TOKEN + "\n"}) as server:  # secrets created with `echo` end in a newline
        yield server


def read_kwargs(server):
    return {"credentials": AnonymousCredentials(), "endpoint": server.endpoint}


def test_reads_latest_version_when_none_is_named(secret_manager):
    assert read_secret(SECRET, **read_kwargs(secret_manager)) == TOKEN
    assert read_secret(f"{SECRET}/versions/latest", **read_kwargs(secret_manager)) == TOKEN
    assert secret_manager.accessed == [f"{SECRET}/versions/latest"] * 2


def test_missing_secret_is_a_clear_error(secret_manager):
    with pytest.raises(UserError, match=r"cannot read secret projects/test-project/secrets/other/versions/latest: HTTP 404"):
        read_secret("projects/test-project/secrets/other", **read_kwargs(secret_manager))


@pytest.mark.parametrize("bad", ["hf-token", "projects/p/secrets", "secrets/x/versions/1"])
def test_malformed_names_are_rejected(bad):
    with pytest.raises(UserError, match="must look like projects/PROJECT/secrets/NAME"):
        secret_version_name(bad)


def test_a_token_given_as_a_name_is_refused_without_echoing_it():
    with pytest.raises(UserError) as raised:
        secret_version_name(TOKEN, "hf_token_secret")
    assert "not a token value" in str(raised.value) and TOKEN not in str(raised.value)


def test_environment_is_the_local_fallback(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "local-token")
    assert resolve_hf_token("") == "local-token"
    monkeypatch.delenv("HF_TOKEN")
    assert resolve_hf_token(None) is None


def test_export_puts_the_secret_where_huggingface_hub_looks(secret_manager, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert export_hf_token(SECRET, **read_kwargs(secret_manager)) is True
    import os

    assert os.environ["HF_TOKEN"] == TOKEN
