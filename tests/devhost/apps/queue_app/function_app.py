"""Queue trigger sample app: echoes each message to an output queue; `fail` messages raise."""
import json

import azure.functions as func

app = func.FunctionApp()


@app.queue_trigger(arg_name="msg", queue_name="%IN_QUEUE%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="$return", queue_name="%OUT_QUEUE%",
                  connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> str:
    body = msg.get_body().decode()
    if body.startswith("fail"):
        raise ValueError("asked to fail")
    return json.dumps({"body": body, "dequeue_count": msg.dequeue_count, "id": msg.id})
