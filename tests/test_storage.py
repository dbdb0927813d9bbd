"""Storage access: connection resolution like the host, and idempotent resource creation."""
import socket

import pytest
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from shared.health import check_health
from shared.settings import Settings
from shared.storage import (
    AZURITE_ACCOUNT,
    StorageConfigError,
    StorageConnection,
    client_options,
    ensure_resources,
)


def test_development_storage_shortcut_points_at_azurite() -> None:
    conn = StorageConnection.from_env("AzureWebJobsStorage",
                                      {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert conn.connection_string and "127.0.0.1:10000" in conn.connection_string
    assert conn.blob_service().account_name == AZURITE_ACCOUNT


def test_identity_based_connection_uses_service_uris_and_managed_identity() -> None:
    env = {
        "MyConn__blobServiceUri": "https://acct.blob.core.windows.net/",
        "MyConn__queueServiceUri": "https://acct.queue.core.windows.net",
        "MyConn__tableServiceUri": "https://acct.table.core.windows.net",
        "MyConn__credential": "managedidentity",
        "MyConn__clientId": "00000000-0000-0000-0000-000000000001",
    }
    conn = StorageConnection.from_env("MyConn", env)
    assert conn.connection_string is None
    assert conn.blob_uri == "https://acct.blob.core.windows.net"
    assert isinstance(conn.credential(), ManagedIdentityCredential)
    assert conn.blob_service().url.startswith("https://acct.blob.core.windows.net")
    assert conn.queue("work").queue_name == "work"


def test_account_name_derives_uris_and_default_credential() -> None:
    conn = StorageConnection.from_env("AzureWebJobsStorage",
                                      {"AzureWebJobsStorage__accountName": "acct"})
    assert conn.table_uri == "https://acct.table.core.windows.net"
    assert isinstance(conn.credential(), DefaultAzureCredential)


@pytest.mark.parametrize(("env", "name"), [
    ({}, "AzureWebJobsStorage__blobServiceUri"),
    ({"AzureWebJobsStorage": "not a connection string"}, "AzureWebJobsStorage"),
    ({"AzureWebJobsStorage__blobServiceUri": "ftp://x", "AzureWebJobsStorage__queueServiceUri":
      "https://q", "AzureWebJobsStorage__tableServiceUri": "https://t"},
     "AzureWebJobsStorage__blobServiceUri"),
    ({"AzureWebJobsStorage__accountName": "a", "AzureWebJobsStorage__credential": "password"},
     "AzureWebJobsStorage__credential"),
])
def test_bad_connection_settings_name_the_setting(env: dict, name: str) -> None:
    with pytest.raises(StorageConfigError) as err:
        StorageConnection.from_env("AzureWebJobsStorage", env)
    assert err.value.name == name and name in str(err.value)


def test_ensure_resources_is_idempotent(settings: Settings, connection: StorageConnection) -> None:
    first = ensure_resources(settings, connection)
    assert sorted(first["containers"]) == sorted(settings.containers())
    assert sorted(first["queues"]) == sorted(settings.queues())
    assert sorted(first["tables"]) == sorted(settings.tables())
    second = ensure_resources(settings, connection)
    assert second == {"containers": [], "queues": [], "tables": []}
    blobs = {c.name for c in connection.blob_service().list_containers()}
    assert set(settings.containers()) <= blobs
    tables = {t.name for t in connection.table_service().list_tables()}
    assert set(settings.tables()) <= tables


def test_queue_messages_are_base64_like_the_host(settings: Settings,
                                                 connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    connection.queue(settings.work_queue).send_message('{"jobId": "j1"}')
    raw = connection.queue_service().get_queue_client(settings.work_queue).receive_message()
    assert raw is not None and raw.content == "eyJqb2JJZCI6ICJqMSJ9"


def test_health_reports_storage(storage_env: dict[str, str], settings: Settings,
                                connection: StorageConnection) -> None:
    status, body = check_health(storage_env)
    assert status == 200 and body["checks"] == {"settings": "ok", "storage.blob": "ok",
                                                "storage.queue": "ok", "storage.table": "ok"}
    status, body = check_health({**storage_env, "VM_SLOTS": "x"})
    assert status == 503 and "VM_SLOTS" in body["checks"]["settings"]
    dead = {**storage_env, "AzureWebJobsStorage": storage_env["AzureWebJobsStorage"].replace(
        f":{connection.blob_service().url.split(':')[2].split('/')[0]}/", ":1/")}
    status, body = check_health(dead)
    assert status == 503 and body["checks"]["storage.blob"].startswith("unreachable")
    assert body["checks"]["storage.queue"] == "ok"  # it says what is down, and only that


def test_health_answers_when_storage_hangs(storage_env: dict[str, str],
                                           connection: StorageConnection) -> None:
    """A storage endpoint that accepts connections and never answers (as during an outage)
    is reported down by the deadline instead of holding the health check."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        blob_port = connection.blob_service().url.split(":")[2].split("/")[0]
        env = {**storage_env, "AzureWebJobsStorage": storage_env["AzureWebJobsStorage"]
               .replace(f":{blob_port}/", f":{port}/")}
        status, body = check_health(env, deadline_s=1.0)
    assert status == 503
    assert body["checks"]["storage.blob"] == "unreachable: no answer within 1s"
    assert body["checks"]["storage.table"] == "ok"


def test_clients_skip_environment_lookups_unless_the_environment_sets_some() -> None:
    quiet = client_options({"PATH": "/usr/bin", "HOME": "/root"})
    assert isinstance(quiet["transport"], RequestsTransport)
    assert quiet["transport"].connection_config.verify is True
    with quiet["transport"] as transport:  # the requests session it opens trusts no env
        assert transport.session.trust_env is False
    # A proxy or a netrc in the environment: the SDK's default, which reads them per request.
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "NETRC"):
        assert client_options({name: "x"}) == {}
    assert "transport" in client_options({"HTTPS_PROXY": ""})  # set but empty: nothing to use
    # A CA bundle is read once and verified against, in requests' order of precedence.
    bundled = client_options({"CURL_CA_BUNDLE": "/etc/curl.pem",
                              "requests_ca_bundle": "/etc/requests.pem"})
    assert bundled["transport"].connection_config.verify == "/etc/requests.pem"
    with bundled["transport"] as transport:
        assert transport.session.trust_env is False
    assert client_options({"CURL_CA_BUNDLE": "/etc/curl.pem"})[
        "transport"].connection_config.verify == "/etc/curl.pem"
