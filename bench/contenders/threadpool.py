"""A thread-pool boto3 consumer: what a Python user writes after the seed loop.

    BENCH_ENDPOINT=... BENCH_QUEUE_URL=... BENCH_THREADS=32 BENCH_POLLERS=4 \
        python bench/contenders/threadpool.py

A few poller threads long-poll batches of 10; each message goes to a shared
``ThreadPoolExecutor`` that calls ``send_task_success`` and then ``delete_message``.
A poller waits for its batch before polling again (bounded work in flight).  boto3
clients are thread-safe; their connection pools are sized to the thread count.
Runs until SIGTERM.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

OUTPUT = json.dumps({"body": "Return from callback"})


def main() -> None:
    endpoint, queue_url = os.environ["BENCH_ENDPOINT"], os.environ["BENCH_QUEUE_URL"]
    threads = int(os.environ.get("BENCH_THREADS", "32"))
    pollers = int(os.environ.get("BENCH_POLLERS", "4"))
    session = boto3.session.Session(region_name="us-east-1")
    config = Config(retries={"mode": "standard"}, max_pool_connections=threads + pollers)
    sqs = session.client("sqs", endpoint_url=endpoint, config=config)
    sfn = session.client("stepfunctions", endpoint_url=endpoint, config=config)

    def complete(message: dict[str, Any]) -> None:
        token = json.loads(message["Body"])["taskToken"]
        sfn.send_task_success(taskToken=token, output=OUTPUT)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    with ThreadPoolExecutor(max_workers=threads) as pool:

        def poll() -> None:
            while True:
                response = sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=20
                )
                # list() waits for the batch and re-raises a failed completion.
                list(pool.map(complete, response.get("Messages", [])))

        workers = [threading.Thread(target=poll, daemon=True) for _ in range(pollers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()


if __name__ == "__main__":
    main()
