"""A local stand-in for the interruption queue: SQS's calls, EventBridge's message shapes.

The demo puts the events EC2 and Auto Scaling would emit (the documented
EventBridge shapes) on this queue, and the controller's
:class:`~spotrelay.controller.queue.QueueConsumer` reads it with the same
``receive_message`` / ``delete_message`` calls and response shapes it uses
against SQS. Like SQS, a received message is invisible for
``visibility_timeout_s`` and comes back if it is not deleted.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ec2_event(detail_type: str, instance_id: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": ACCOUNT,
        "time": _now_iso(),
        "region": REGION,
        "resources": [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, **detail},
    }


def spot_warning(instance_id: str) -> dict[str, Any]:
    """``EC2 Spot Instance Interruption Warning`` (EC2 User Guide's example shape)."""
    return _ec2_event(
        "EC2 Spot Instance Interruption Warning", instance_id, {"instance-action": "terminate"}
    )


def state_change(instance_id: str, state: str) -> dict[str, Any]:
    """``EC2 Instance State-change Notification`` (EC2 User Guide's example shape)."""
    return _ec2_event("EC2 Instance State-change Notification", instance_id, {"state": state})


class LocalQueue:
    """In-memory queue answering the SQS calls the controller makes."""

    def __init__(self, visibility_timeout_s: float = 5.0) -> None:
        self.url = "local://interruptions"
        self.visibility_timeout_s = visibility_timeout_s
        self._lock = threading.Lock()
        self._messages: dict[str, dict[str, Any]] = {}  # id -> {body, visible_at}
        self._handles: dict[str, str] = {}  # receipt handle -> message id
        self._serial = itertools.count(1)
        self.sent = 0

    def send_message(self, QueueUrl: str, MessageBody: str) -> dict[str, Any]:
        message_id = str(uuid.uuid4())
        with self._lock:
            self._messages[message_id] = {"body": MessageBody, "visible_at": 0.0}
            self.sent += 1
        return {"MessageId": message_id}

    def send_event(self, event: dict[str, Any]) -> None:
        """What an EventBridge rule targeting the queue does with a matching event."""
        self.send_message(QueueUrl=self.url, MessageBody=json.dumps(event))

    def receive_message(
        self,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        WaitTimeSeconds: int = 0,
    ) -> dict[str, Any]:
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        with self._lock:
            for message_id, msg in self._messages.items():
                if len(out) >= MaxNumberOfMessages:
                    break
                if msg["visible_at"] > now:
                    continue
                msg["visible_at"] = now + self.visibility_timeout_s
                handle = f"rh-{next(self._serial)}"
                self._handles[handle] = message_id
                out.append({"MessageId": message_id, "ReceiptHandle": handle, "Body": msg["body"]})
        return {"Messages": out} if out else {}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> dict[str, Any]:
        with self._lock:
            message_id = self._handles.pop(ReceiptHandle, None)
            if message_id is not None:
                self._messages.pop(message_id, None)
        return {}

    def depth(self) -> int:
        with self._lock:
            return len(self._messages)
