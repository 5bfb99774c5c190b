"""The seeds' Lambda pattern as a loop: synchronous boto3, one record at a time.

    BENCH_ENDPOINT=http://127.0.0.1:PORT BENCH_QUEUE_URL=... python bench/contenders/seed_loop.py

What the event source mapping plus the seed function do (seed 000), minus the
``time.sleep(7)`` and the ``print``s (they print the task token, which the benchmark
must never do): receive up to 10 records, then for each record ``send_task_success`` and
delete it.  Runs until SIGTERM.
"""

from __future__ import annotations

import json
import os

import boto3
from botocore.config import Config

OUTPUT = json.dumps({"body": "Return from callback"})


def main() -> None:
    endpoint, queue_url = os.environ["BENCH_ENDPOINT"], os.environ["BENCH_QUEUE_URL"]
    session = boto3.session.Session(region_name="us-east-1")
    config = Config(retries={"mode": "standard"})
    sqs = session.client("sqs", endpoint_url=endpoint, config=config)
    step = session.client("stepfunctions", endpoint_url=endpoint, config=config)
    while True:
        response = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=20
        )
        for record in response.get("Messages", []):
            main_message = json.loads(record["Body"])
            step.send_task_success(taskToken=main_message["taskToken"], output=OUTPUT)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["ReceiptHandle"])


if __name__ == "__main__":
    main()
