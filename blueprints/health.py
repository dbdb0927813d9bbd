"""Health endpoint: anonymous, for load balancers and deployment checks."""
import json

import azure.durable_functions as df
import azure.functions as func

from shared.health import check_health

bp = df.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health_http(req: func.HttpRequest) -> func.HttpResponse:
    status, body = check_health()
    return func.HttpResponse(json.dumps(body), status_code=status,
                             mimetype="application/json")
