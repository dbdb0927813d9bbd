"""The dashboard area: the operators' page and its static assets (see `shared/dashboard.py`).

Anonymous on purpose: the page carries no data and asks for the function key, which it sends
to the keyed API only.
"""
import azure.durable_functions as df
import azure.functions as func

from blueprints.http_util import api_errors
from shared import dashboard
from shared.api import not_found

bp = df.Blueprint()


def _serve(found: dashboard.Asset) -> func.HttpResponse:
    return func.HttpResponse(found.body, mimetype=found.mimetype, headers=dashboard.HEADERS,
                             charset="utf-8")


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api_errors
async def dashboard_http(req: func.HttpRequest) -> func.HttpResponse:
    return _serve(dashboard.page())


@bp.route(route="dashboard/{asset}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@api_errors
async def dashboard_asset_http(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("asset", "")
    found = dashboard.asset(name)
    if found is None:
        raise not_found(f"dashboard asset '{name[:100]}' does not exist")
    return _serve(found)
