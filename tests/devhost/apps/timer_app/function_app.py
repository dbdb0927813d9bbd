"""Timer sample app: a fast timer that runs on startup and a yearly monitored one.

Each invocation writes `%OUT_CONTAINER%/<function>/<random>` with `past_due`.
"""
import json

import azure.functions as func

app = func.FunctionApp()


@app.timer_trigger(arg_name="timer", schedule="%FAST_SCHEDULE%", run_on_startup=True,
                   use_monitor=False)
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/fast/{rand-guid}",
                 connection="AzureWebJobsStorage")
def fast_timer(timer: func.TimerRequest, out: func.Out[str]) -> None:
    out.set(json.dumps({"past_due": timer.past_due}))


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
@app.blob_output(arg_name="out", path="%OUT_CONTAINER%/yearly/{rand-guid}",
                 connection="AzureWebJobsStorage")
async def yearly_timer(timer: func.TimerRequest, out: func.Out[str]) -> None:
    out.set(json.dumps({"past_due": timer.past_due, "status": timer.schedule_status}))
