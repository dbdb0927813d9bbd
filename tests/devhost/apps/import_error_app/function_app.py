"""An app whose import fails (a module it needs is missing): the worker cannot index it."""
import azure.functions as func
import module_that_is_not_installed  # noqa: F401

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="hello")
def hello(req: func.HttpRequest) -> str:
    return "hello"
