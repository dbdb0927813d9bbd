"""Entry point of the function app: creates the Durable app and registers each area's blueprint.

No business logic lives here; see `blueprints/` (functions) and `shared/` (logic).
"""
import azure.durable_functions as df
import azure.functions as func

from blueprints import dashboard, health, ingest, jobs, orchestration, pool
from shared import telemetry

telemetry.configure()  # Azure Monitor exporters when APPLICATIONINSIGHTS_CONNECTION_STRING is set

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health.bp, ingest.bp, orchestration.bp, pool.bp, jobs.bp, dashboard.bp):
    app.register_functions(blueprint)
