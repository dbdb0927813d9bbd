"""Ingest: the collector timer and the blob trigger that start orchestrations."""
import logging

import azure.durable_functions as df
import azure.functions as func

from shared import contracts
from shared.clock import utcnow
from shared.durable_client import start_once, start_or_restart
from shared.ingest import file_start_for_blob, run_input_for_tick, split_blob_path
from shared.services import get_services
from shared.settings import Settings

bp = df.Blueprint()
log = logging.getLogger(__name__)

# The trigger's source and connection are fixed when the app is indexed: Event Grid in Azure
# (Flex Consumption supports only that), container polling locally.
_SOURCE = (func.BlobSource.EVENT_GRID if Settings.one("blob_trigger_source") == "eventgrid"
           else func.BlobSource.LOGS_AND_CONTAINER_SCAN)
_CONNECTION = Settings.one("storage_connection")


@bp.timer_trigger(arg_name="timer", schedule="%COLLECT_SCHEDULE%", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def collect_data_timer(timer: func.TimerRequest,
                             client: df.DurableOrchestrationClient) -> None:
    run_id, payload = run_input_for_tick(get_services(), utcnow())
    started = await start_once(client, contracts.PROCESS_RUN, run_id, payload)
    log.info("collect_data_timer: run %s %s (past due: %s)", run_id,
             "started" if started else "already exists", timer.past_due)


@bp.blob_trigger(arg_name="blob", path="%DATA_CONTAINER%/{name}", connection=_CONNECTION,
                 source=_SOURCE)
@bp.durable_client_input(client_name="client")
async def data_blob_trigger(blob: func.InputStream,
                            client: df.DurableOrchestrationClient) -> None:
    services = get_services()
    container, name = split_blob_path(blob.name or "", services.settings.data_container)
    props = blob.blob_properties or {}
    start = file_start_for_blob(services, container, name, {
        "etag": props.get("ETag"), "size": blob.length, "metadata": blob.metadata})
    if start is None:
        return
    instance_id, payload = start
    # A file whose last orchestration failed or was terminated is still in data/: start it
    # again, or it would sit there for good.
    outcome = await start_or_restart(client, contracts.PROCESS_FILE, instance_id, payload)
    log.info("data_blob_trigger: %s/%s → %s %s", container, name[:200], instance_id, outcome)
