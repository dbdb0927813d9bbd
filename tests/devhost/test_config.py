"""Settings, host.json and indexing errors: clear errors, nothing started, env restored."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from devhost.config import HostConfig, parse_timespan, resolve_binding
from devhost.errors import ConfigError, IndexingError
from devhost.testing import ThreadedHost, running_host


def test_local_settings_fill_in_but_never_override(apps: Path, host_env: dict[str, str]) -> None:
    env = {**host_env, "SAMPLE_FROMENV": "from-env"}
    assert "SAMPLE_FILEONLY" not in os.environ
    with running_host(apps / "prefix_app", env) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/v1/settings/SAMPLE_FROMENV", timeout=30).json() == {
            "SAMPLE_FROMENV": "from-env"}
        assert requests.get(f"{base}/v1/settings/SAMPLE_FILEONLY", timeout=30).json() == {
            "SAMPLE_FILEONLY": "file-only"}
        assert requests.get(f"{base}/v1/settings/OTHER", timeout=30).status_code == 404
    assert "SAMPLE_FILEONLY" not in os.environ


def test_host_json_values_and_errors() -> None:
    config = HostConfig.from_dict({"version": "2.0", "functionTimeout": "00:02:00", "extensions": {
        "http": {"routePrefix": "/v2/"}, "durableTask": {"hubName": "%HUB%"},
        "queues": {"batchSize": 8, "maxDequeueCount": 2, "maxPollingInterval": 1500}}},
        {"HUB": "myhub"})
    assert config.route_prefix == "v2"
    assert config.hub_name == "myhub"
    assert config.queue_batch_size == 8 and config.queue_new_batch_threshold == 4
    assert config.queue_max_polling_interval.total_seconds() == 1.5
    assert config.function_timeout is not None and config.function_timeout.total_seconds() == 120
    assert HostConfig.from_dict({}, {}).hub_name == "TestHubName"
    for bad in ({"version": "1.0"}, {"extensions": {"queues": {"batchSize": 64}}},
                {"extensions": {"queues": {"visibilityTimeout": "soon"}}},
                {"extensions": {"durableTask": {"hubName": "%MISSING%"}}},
                {"extensions": {"http": {"routePrefix": 5}}}):
        with pytest.raises(ConfigError):
            HostConfig.from_dict(bad, {})
    assert parse_timespan("1.02:00:00", "x").total_seconds() == 93600


def test_setting_references_resolve_in_bindings() -> None:
    resolved = resolve_binding({"type": "queueTrigger", "name": "%X%", "queueName": "q-%X%"},
                               {"X": "one"}, "f")
    assert resolved == {"type": "queueTrigger", "name": "%X%", "queueName": "q-one"}
    with pytest.raises(ConfigError, match="NOPE"):
        resolve_binding({"queueName": "%NOPE%"}, {}, "f")


def write_app(root: Path, source: str, host_json: str = '{"version": "2.0"}') -> Path:
    root.mkdir()
    (root / "function_app.py").write_text(source)
    (root / "host.json").write_text(host_json)
    return root


TIMER_APP = ("import azure.functions as func\n"
             "app = func.FunctionApp()\n"
             "@app.timer_trigger(arg_name='t', schedule='0 0 0 1 1 *')\n"
             "def f(t: func.TimerRequest) -> None: ...\n")


def test_non_http_triggers_need_azure_web_jobs_storage(tmp_path: Path,
                                                       host_env: dict[str, str]) -> None:
    root = write_app(tmp_path / "app", TIMER_APP)
    threaded = ThreadedHost(root, {**host_env, "AzureWebJobsStorage": ""})
    with pytest.raises(ConfigError, match="AzureWebJobsStorage is required"):
        threaded.start()


@pytest.mark.parametrize(("source", "host_json", "error"), [
    ("import azure.functions as func\n"
     "app = func.FunctionApp()\n"
     "@app.queue_trigger(arg_name='m', queue_name='%NOT_SET_ANYWHERE%', connection='C')\n"
     "def f(m: func.QueueMessage) -> None: ...\n", '{"version": "2.0"}', IndexingError),
    ("import azure.functions as func\n"
     "app = func.FunctionApp()\n"
     "@app.route(route='x')\n"
     "@app.queue_output(arg_name='out', queue_name='q', connection='C')\n"
     "def f(req: func.HttpRequest, out: str) -> str: ...\n", '{"version": "2.0"}', IndexingError),
    ("x = 1\n", '{"version": "2.0"}', IndexingError),
    ("import azure.functions as func\n"
     "app = func.FunctionApp()\n"
     "@app.service_bus_queue_trigger(arg_name='m', queue_name='q', connection='C')\n"
     "def f(m: func.ServiceBusMessage) -> None: ...\n", '{"version": "2.0"}', ConfigError),
    ("import azure.functions as func\n"
     "app = func.FunctionApp()\n"
     "@app.route(route='x')\n"
     "@app.event_hub_output(arg_name='out', event_hub_name='h', connection='C')\n"
     "def f(req: func.HttpRequest, out: func.Out[str]) -> str: ...\n", '{"version": "2.0"}',
     ConfigError),
    ("raise RuntimeError('broken import')\n", '{"version": "2.0"}', IndexingError),
    ("import azure.functions as func\napp = func.FunctionApp()\n", "{not json", ConfigError),
])
def test_bad_apps_fail_to_start_with_a_clear_error(tmp_path: Path, host_env: dict[str, str],
                                                   source: str, host_json: str,
                                                   error: type[Exception]) -> None:
    root = write_app(tmp_path / "app", source, host_json)
    threaded = ThreadedHost(root, host_env)
    with pytest.raises(error):
        threaded.start()
    assert "function_app" not in __import__("sys").modules
    assert os.environ.get("DEVHOST_MASTER_KEY") is None


def test_function_timeout_from_host_json(tmp_path: Path, host_env: dict[str, str]) -> None:
    root = write_app(tmp_path / "app", (
        "import asyncio\n"
        "import azure.functions as func\n"
        "app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)\n"
        "@app.route(route='sleep/{seconds:double}')\n"
        "async def sleepy(req: func.HttpRequest) -> str:\n"
        "    await asyncio.sleep(float(req.route_params['seconds']))\n"
        "    return 'awake'\n"), '{"version": "2.0", "functionTimeout": "00:00:00.5"}')
    with running_host(root, host_env) as threaded:
        base = threaded.host.base_url
        assert requests.get(f"{base}/api/sleep/0", timeout=30).text == "awake"
        late = requests.get(f"{base}/api/sleep/30", timeout=30)
        assert (late.status_code, late.content) == (500, b"")
