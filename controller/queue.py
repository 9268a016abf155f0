"""Polling the interruption queue: SQS, or the demo's local stand-in with the same calls.

In AWS the Lambda's SQS event source mapping does the polling; this consumer
is for running the controller as a process (the local demo, or a host that
cannot run Lambda). A message is deleted once handled, including duplicates
and events that are not ours; one whose routers could not be reached is left
in the queue, so it comes back after the visibility timeout and, after the
queue's ``maxReceiveCount``, lands in the dead-letter queue.
"""

from __future__ import annotations

import logging
from typing import Any

from .interruptions import InterruptionHandler, Outcome

log = logging.getLogger("spotrelay.controller")


class QueueConsumer:
    def __init__(self, sqs: Any, queue_url: str, handler: InterruptionHandler) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler

    def poll_once(self, wait_s: int = 0) -> list[Outcome]:
        """Receive up to 10 messages and handle them; the outcomes of those handled."""
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        )
        outcomes = []
        for msg in resp.get("Messages", []):
            outcome = self.handler.handle_message(msg.get("Body"), msg.get("MessageId"))
            if outcome is None:
                continue  # visible again after the visibility timeout, then the DLQ
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
            outcomes.append(outcome)
        return outcomes
