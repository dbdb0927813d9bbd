"""Blob triggers: the polling source (container scan) and the Event Grid source (webhook).

Both sources go through receipts: `azure-webjobs-hosts/blobreceipts/{hostId}/{function}/
{etag}/{container}/{blob}`. A completed receipt means that version of the blob was handled,
so a restart fires nothing twice and an overwrite (new ETag) fires again. A failing blob is
retried on later scans and after `maxDequeueCount` failures a message goes to the queue
`webjobs-blobtrigger-poison`, as on the real host.

The scan cursor (`blobscaninfo/{hostId}/{function}/cursor`) holds the newest LastModified
seen; a blob is a candidate when its LastModified >= the cursor.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobServiceClient

from devhost.errors import BindingError, ConfigError, InvocationError
from devhost.http_front import error_response
from devhost.invoker import Invoker, blob_argument
from devhost.keys import HostKeys
from devhost.loader import FunctionSpec
from devhost.timers import HOSTS_CONTAINER

log = logging.getLogger("devhost")
POISON_QUEUE = "webjobs-blobtrigger-poison"
_PARAM = re.compile(r"\{([^{}]+)\}")


def is_event_grid(spec: FunctionSpec) -> bool:
    return str(spec.trigger.get("source") or "").lower() == "eventgrid"


class BlobPattern:
    """`container/prefix/{name}.csv`: the container, the listing prefix and a matcher."""

    def __init__(self, path: str, function_name: str) -> None:
        container, _, blob = path.strip("/").partition("/")
        if not container or "{" in container:
            raise ConfigError(f"function {function_name}: blob path {path!r} needs a fixed"
                              " container name")
        self.container = container
        self.prefix = blob.split("{", 1)[0]
        pattern = ""
        pos = 0
        for match in _PARAM.finditer(blob):
            pattern += re.escape(blob[pos:match.start()])
            name = match.group(1).strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ConfigError(f"function {function_name}: bad parameter {{{name}}} in"
                                  f" blob path {path!r}")
            pattern += f"(?P<{name}>.+?)"
            pos = match.end()
        pattern += re.escape(blob[pos:]) if blob else ".*"
        self.regex = re.compile(f"^{pattern}$", re.DOTALL)

    def match(self, container: str, name: str) -> dict[str, str] | None:
        if container != self.container:
            return None
        found = self.regex.match(name)
        return None if found is None else found.groupdict()


def write_hosts_blob(service: BlobServiceClient, client: BlobClient, data: bytes,
                     metadata: dict[str, str] | None = None) -> None:
    """Write one of the host's own blobs (receipts, scan cursors), creating the hosts
    container only when storage says it is missing, not before every write."""
    try:
        client.upload_blob(data, overwrite=True, metadata=metadata)
    except ResourceNotFoundError:
        try:
            service.create_container(HOSTS_CONTAINER)
        except ResourceExistsError:
            pass
        client.upload_blob(data, overwrite=True, metadata=metadata)


class BlobTrigger:
    """One blob-triggered function: receipts, invocation and retries."""

    def __init__(self, spec: FunctionSpec, invoker: Invoker, host_id: str,
                 max_failures: int) -> None:
        self.spec = spec
        self.invoker = invoker
        self.host_id = host_id
        self.max_failures = max_failures
        self.pattern = BlobPattern(str(spec.trigger["path"]), spec.name)
        self.connection = spec.trigger.get("connection")
        self._busy: set[tuple[str, str]] = set()
        # (name, ETag) of the versions this host knows are done (receipt read or written as
        # completed), so a scan that lists them again asks no receipt; pruned by the poller.
        self.completed: set[tuple[str, str]] = set()

    # --- receipts (blocking) ---------------------------------------------------------------

    def _receipt(self, etag: str, name: str) -> BlobClient:
        path = (f"blobreceipts/{self.host_id}/{self.spec.name}/{etag.strip(chr(34))}/"
                f"{self.pattern.container}/{name}")
        return self.invoker.storage.blob_service(None).get_blob_client(HOSTS_CONTAINER, path)

    def _read_receipt(self, etag: str, name: str) -> dict[str, str]:
        try:
            return dict(self._receipt(etag, name).get_blob_properties().metadata or {})
        except ResourceNotFoundError:
            return {}

    def _write_receipt(self, etag: str, name: str, metadata: dict[str, str]) -> None:
        write_hosts_blob(self.invoker.storage.blob_service(None), self._receipt(etag, name),
                         b"", metadata)

    def _poison(self, name: str, etag: str) -> None:
        body = json.dumps({"Type": "BlobTrigger", "FunctionId": f"Host.Functions.{self.spec.name}",
                           "BlobType": "BlockBlob", "ContainerName": self.pattern.container,
                           "BlobName": name, "ETag": etag})
        self.invoker.storage.send_messages(None, POISON_QUEUE, [body])

    # --- processing -----------------------------------------------------------------------

    async def process(self, name: str, reason: str, listed_etag: str | None = None
                      ) -> bool | None:
        """Handle the current version of one blob: True done, False failed, None skipped.

        With `listed_etag` (from a listing) a completed receipt skips the download."""
        values = self.pattern.match(self.pattern.container, name)
        if values is None:
            return None
        early: dict[str, str] | None = None
        if listed_etag is not None:
            early = await self.invoker.io(self._read_receipt, listed_etag, name)
            if early.get("completed") == "true":
                self.completed.add((name, listed_etag.strip('"')))
                return None
        path = f"{self.pattern.container}/{name}"
        found = await self.invoker.io(self.invoker.storage.read_blob, self.connection, path)
        if found is None:
            return None
        data, props = found
        etag = str(props["ETag"])
        key = (name, etag.strip('"'))
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            # The receipt of the version just listed was read a moment ago: read it again only
            # when the blob changed in between.
            receipt = early if early is not None and key[1] == str(listed_etag).strip('"') else \
                await self.invoker.io(self._read_receipt, etag, name)
            if receipt.get("completed") == "true":
                self.completed.add(key)
                return None
            metadata: dict[str, Any] = {"BlobTrigger": path, "Uri": props["Uri"],
                                        "Properties": props, "Metadata": props["Metadata"],
                                        **values}
            try:
                try:
                    argument = blob_argument(
                        data, self.spec.annotation(self.spec.trigger["name"]), metadata)
                except (ValueError, TypeError, UnicodeDecodeError) as exc:
                    log.error("blob %s for %s: cannot bind: %s", path, self.spec.name, exc)
                    raise InvocationError(str(exc)) from exc
                await self.invoker.invoke(self.spec, argument, metadata,
                                          f"New blob detected({reason}): {path}")
            except InvocationError:
                failures = int(receipt.get("failures", "0")) + 1
                if failures >= self.max_failures:
                    log.error("blob %s failed %d times for %s: moved to %s", path, failures,
                              self.spec.name, POISON_QUEUE)
                    await self.invoker.io(self._poison, name, etag)
                    await self.invoker.io(self._write_receipt, etag, name,
                                          {"completed": "true", "failures": str(failures),
                                           "poisoned": "true"})
                    self.completed.add(key)
                    return True
                await self.invoker.io(self._write_receipt, etag, name,
                                      {"failures": str(failures)})
                return False
            await self.invoker.io(self._write_receipt, etag, name, {"completed": "true"})
            self.completed.add(key)
            return True
        finally:
            self._busy.discard(key)


class BlobPoller:
    """The LogsAndContainerScan source: scans the container every `interval` seconds, or
    less often while listing it is slow (see `pause`)."""

    # A scan lists the whole container, so its cost grows with what waits there: the pause
    # after a scan is at least this many times its listing, keeping listings to a fifth of
    # the poller's time however full the container gets (a short interval and thousands of
    # waiting blobs would otherwise spend the host's CPU on parsing the same names again).
    LIST_PAUSE_FACTOR = 4.0

    def __init__(self, trigger: BlobTrigger, interval: float, stop: asyncio.Event,
                 concurrency: int = 16) -> None:
        self.trigger = trigger
        self.interval = interval
        self.stop = stop
        self.cursor_path = f"blobscaninfo/{trigger.host_id}/{trigger.spec.name}/cursor"
        # The host hands each blob a scan finds to its blob-trigger queue, whose listener runs
        # as many at once as the queue options allow (`extensions.queues.batchSize`).
        self.concurrency = max(1, concurrency)
        self._cursor: datetime | None = None
        self._cursor_loaded = False
        self.last_list_seconds = 0.0

    def _load_cursor(self) -> datetime | None:
        client = self.trigger.invoker.storage.blob_service(None).get_blob_client(
            HOSTS_CONTAINER, self.cursor_path)
        try:
            data = json.loads(client.download_blob().readall())
            return datetime.fromisoformat(data["LatestScan"])
        except ResourceNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("blob scan cursor of %s is unreadable; rescanning",
                        self.trigger.spec.name)
            return None

    def _save_cursor(self, cursor: datetime) -> None:
        service = self.trigger.invoker.storage.blob_service(None)
        write_hosts_blob(service, service.get_blob_client(HOSTS_CONTAINER, self.cursor_path),
                         json.dumps({"LatestScan": cursor.isoformat()}).encode())

    def _list(self) -> list[tuple[str, datetime, str]]:
        trig = self.trigger
        container = trig.invoker.storage.blob_service(trig.connection).get_container_client(
            trig.pattern.container)
        try:
            return [(b.name, b.last_modified, str(b.etag)) for b in
                    container.list_blobs(name_starts_with=trig.pattern.prefix or None)]
        except ResourceNotFoundError:
            return []

    async def scan_once(self) -> int:
        """One scan; returns how many blobs were handled."""
        io = self.trigger.invoker.io
        if not self._cursor_loaded:  # this poller is the cursor's only writer: read it once
            self._cursor, self._cursor_loaded = await io(self._load_cursor), True
        cursor = self._cursor
        started = time.monotonic()
        items = await io(self._list)
        self.last_list_seconds = time.monotonic() - started
        # Listing times have whole seconds, so the blobs of the cursor's own second are listed
        # again by every scan until it moves on; those known done are not asked about again.
        done = self.trigger.completed
        done &= {(name, etag.strip('"')) for name, _, etag in items}
        fresh = [item for item in sorted(items, key=lambda item: item[1])
                 if (cursor is None or item[1] >= cursor)
                 and (item[0], item[2].strip('"')) not in done]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(name: str, etag: str) -> bool | None:
            async with gate:
                if self.stop.is_set():
                    return None
                try:
                    return await self.trigger.process(name, "LogsAndContainerScan", etag)
                except (BindingError, OSError) as exc:
                    log.warning("blob %s for %s: %s", name, self.trigger.spec.name, exc)
                    return False

        outcomes = await asyncio.gather(*(one(name, etag) for name, _, etag in fresh))
        if self.stop.is_set():
            return sum(1 for o in outcomes if o is True)
        failed = [modified for (_, modified, _), o in zip(fresh, outcomes, strict=True)
                  if o is False]
        newest = min(failed) if failed else max((m for _, m, _ in items), default=cursor)
        if newest is not None and newest != cursor:
            await io(self._save_cursor, newest)
            self._cursor = newest
        return sum(1 for o in outcomes if o is True)

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self.scan_once()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup must not end the poller
                log.warning("blob scan for %s failed: %s", self.trigger.spec.name, exc)
            try:
                await asyncio.wait_for(self.stop.wait(), self.pause())
            except asyncio.TimeoutError:
                pass

    def pause(self) -> float:
        """Seconds until the next scan: the interval, or more after a slow listing."""
        return max(self.interval, self.LIST_PAUSE_FACTOR * self.last_list_seconds)


def _blob_names(url: str) -> tuple[str, str] | None:
    try:
        client = BlobClient.from_blob_url(url)
    except ValueError:
        return None
    return client.container_name, unquote(client.blob_name)


class EventGridWebhook:
    """`POST /runtime/webhooks/blobs?functionName=Host.Functions.NAME` for EventGrid sources."""

    def __init__(self, triggers: dict[str, BlobTrigger], keys: HostKeys,
                 spawn: Callable[[Any], None]) -> None:
        self.triggers = {name.lower(): t for name, t in triggers.items()}
        self.keys = keys
        self.spawn = spawn

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":  # CloudEvents abuse-protection handshake
            origin = request.headers.get("WebHook-Request-Origin", "*")
            return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})
        if request.method != "POST":
            return error_response(405, "MethodNotAllowed", "use POST",
                                  headers={"Allow": "POST, OPTIONS"})
        if not self.keys.allows_blobs_webhook(HostKeys.presented(request.query,
                                                                  request.headers)):
            return error_response(401, "Unauthorized", "the blobs_extension or master key is"
                                  " required")
        raw_name = request.query.get("functionName", "")
        name = raw_name.split(".")[-1] if raw_name.startswith("Host.Functions.") else raw_name
        trigger = self.triggers.get(name.lower())
        if trigger is None:
            return error_response(404, "NotFound",
                                  f"no EventGrid blob trigger named {raw_name!r}")
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error_response(400, "BadRequest", "body must be JSON Event Grid events")
        events = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(e, dict) for e in events):
            return error_response(400, "BadRequest", "each event must be a JSON object")
        for event in events:
            kind = event.get("eventType") or event.get("type")
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            if kind == "Microsoft.EventGrid.SubscriptionValidationEvent":
                code = data.get("validationCode")
                if not isinstance(code, str):
                    return error_response(400, "BadRequest", "validationCode is missing")
                return web.json_response({"validationResponse": code})
        for event in events:
            kind = event.get("eventType") or event.get("type")
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            if kind != "Microsoft.Storage.BlobCreated" or not isinstance(data.get("url"), str):
                continue
            names = _blob_names(data["url"])
            if names is None or trigger.pattern.match(*names) is None:
                log.info("event for %s does not match %s; ignored", data["url"],
                         trigger.spec.name)
                continue
            self.spawn(trigger.process(names[1], "EventGrid"))
        return web.Response(status=202)

