"""Storage connection settings as the host reads them (Functions docs: "Identity-based
connections", "Connecting to host storage with an identity"): devhost's own resolution."""
from __future__ import annotations

import pytest
from azure.core.pipeline.transport import AioHttpTransport, RequestsTransport

from devhost.connections import ConnectionSettingError, HostConnection, transport_options


def test_connection_string_and_development_storage() -> None:
    conn = HostConnection.resolve("Store", {"Store": "UseDevelopmentStorage=true"})
    assert conn.connection_string is not None
    assert "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;" in conn.connection_string
    assert "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;" in conn.connection_string
    assert conn.blob_service().account_name == "devstoreaccount1"


def test_identity_based_settings() -> None:
    conn = HostConnection.resolve("Store", {"Store__accountName": "acct",
                                            "Store__queueServiceUri": "https://q.example/",
                                            "Store__credential": "managedidentity",
                                            "Store__clientId": "cid"})
    assert conn.endpoints == {"blob": "https://acct.blob.core.windows.net",
                              "queue": "https://q.example",
                              "table": "https://acct.table.core.windows.net"}
    assert conn.managed_identity and conn.client_id == "cid"
    blob_only = {"S__serviceUri": "https://b.example", "S__queueServiceUri": "https://q",
                 "S__tableServiceUri": "https://t"}
    assert HostConnection.resolve("S", blob_only).endpoints["blob"] == "https://b.example"


@pytest.mark.parametrize(("settings", "needle"), [
    ({}, "no setting Store"),
    ({"Store": "not a connection string"}, "connection string"),
    ({"Store__accountName": "a", "Store__credential": "password"}, "managedidentity"),
    ({"Store__blobServiceUri": "ftp://x", "Store__queueServiceUri": "https://q",
      "Store__tableServiceUri": "https://t"}, "http(s) URI"),
])
def test_bad_settings_name_the_setting(settings: dict[str, str], needle: str) -> None:
    with pytest.raises(ConnectionSettingError, match="Store") as err:
        HostConnection.resolve("Store", settings)
    assert needle in str(err.value)


def test_transports_skip_per_request_environment_lookups() -> None:
    sync = transport_options(environ={"REQUESTS_CA_BUNDLE": "/etc/ca.pem", "HOME": "/root"})
    assert isinstance(sync["transport"], RequestsTransport)
    assert sync["transport"].connection_config.verify == "/etc/ca.pem"  # read once, kept
    with sync["transport"] as transport:
        assert transport.session.trust_env is False
    aio = transport_options(aio=True, environ={"REQUESTS_CA_BUNDLE": "/etc/ca.pem"})
    assert isinstance(aio["transport"], AioHttpTransport)
    assert aio["transport"]._use_env_settings is False
    # A proxy or netrc setting must be read per request: the SDK's default transport.
    for name in ("https_proxy", "NO_PROXY", "NETRC"):
        assert transport_options(environ={name: "x"}) == {}
        assert transport_options(aio=True, environ={name: "x"}) == {}
