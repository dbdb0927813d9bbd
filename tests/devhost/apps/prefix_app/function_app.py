"""A host.json routePrefix of `v1`; the function has no route (its name is the route)."""
import asyncio
import json
import logging
import os
import pathlib

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(methods=["GET"])
def ping(req: func.HttpRequest) -> str:
    logging.getLogger("sample.app").info("ping from the app")
    return "pong"


@app.route(route="settings/{name:regex(^SAMPLE_[A-Z]+$)}", methods=["GET"])
def settings(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params["name"]
    return func.HttpResponse(json.dumps({name: os.environ.get(name)}),
                             mimetype="application/json")


@app.route(route="slow", methods=["GET"])
async def slow(req: func.HttpRequest) -> str:
    """Marks that it started (file named by SLOW_MARKER), then takes a while."""
    pathlib.Path(os.environ["SLOW_MARKER"]).write_text("started")
    await asyncio.sleep(1.5)
    return "done"
