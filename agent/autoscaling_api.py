"""A minimal Auto Scaling API client: botocore's credential chain and SigV4 signer, no boto3.

The agent calls a handful of Auto Scaling actions (complete a lifecycle
action, record its heartbeat, describe the hook, set instance health) in the
last minutes of a node's life. A boto3 client loads the service model and the
endpoint rule set to do that; measured on the agent after a drain
(``bench/agent_bench.py``), that took RSS from 28 MB to 49 MB. Resolving
credentials through botocore's session (environment, profile, instance role
from IMDS, container role: the same chain boto3 uses) and signing with its
``SigV4Auth`` costs about 8 MB instead. Auto Scaling speaks the AWS Query
protocol (a form-encoded POST, an XML answer), which is small enough to
write and parse here.

Failures worth retrying (throttling, 5xx, network) are retried a few times
with backoff (``core.retry``) and then raised as :class:`AwsRetryableError`; an error AWS
returns for the request itself is raised as :class:`AwsError` with its code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import urllib3

from spotrelay.core.backoff import Backoff
from spotrelay.core.retry import retry_until

API_VERSION = "2011-01-01"
SERVICE = "autoscaling"
RETRYABLE_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}
)


class AwsError(Exception):
    """AWS refused the request (``code`` as AWS names it, e.g. ``ValidationError``)."""

    def __init__(self, action: str, code: str, message: str, status: int) -> None:
        super().__init__(f"{action}: {code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class AwsRetryableError(Exception):
    """Throttling, a 5xx or a network failure that outlived the client's retries."""


def default_endpoint(region: str, service: str = SERVICE) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service}.{region}.{suffix}"


def flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """Query-protocol parameters: lists become ``Name.member.N``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            for i, item in enumerate(value, 1):
                flat[f"{key}.member.{i}"] = str(item)
        elif isinstance(value, bool):
            flat[key] = "true" if value else "false"
        else:
            flat[key] = str(value)
    return flat


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_to_data(element: ET.Element) -> Any:
    """An XML answer as plain data: ``member`` lists become lists, leaves strings."""
    children = list(element)
    if not children:
        return element.text or ""
    if all(_local(c.tag) == "member" for c in children):
        return [xml_to_data(c) for c in children]
    return {_local(c.tag): xml_to_data(c) for c in children}


class AutoScalingAPI:
    """Signed Query-protocol calls to one region's Auto Scaling endpoint.

    Subclasses set ``service`` and ``api_version`` for another Query-protocol
    API (CloudWatch: :class:`spotrelay.agent.cloudwatch.CloudWatchAPI`).
    """

    service = SERVICE
    api_version = API_VERSION

    def __init__(
        self,
        region: str | None,
        *,
        endpoint_url: str | None = None,
        attempts: int = 3,
        timeout_s: float = 10.0,
        credentials: Any = None,
    ) -> None:
        if not region and not endpoint_url:
            raise ValueError("an AWS region (lifecycle.region or IMDS) is needed")
        self.region = region or "us-east-1"
        self.endpoint = (endpoint_url or default_endpoint(self.region, self.service)).rstrip(
            "/"
        ) + "/"
        self.attempts = max(1, attempts)
        self._credentials = credentials
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=timeout_s), retries=False
        )

    def credentials(self) -> Any:
        """The instance's credentials, resolved once by botocore's default chain."""
        if self._credentials is None:
            import botocore.session

            creds = botocore.session.Session().get_credentials()
            if creds is None:
                raise AwsError("credentials", "NoCredentials", "no AWS credentials found", 0)
            self._credentials = creds
        return self._credentials

    def call(self, action: str, params: Mapping[str, Any] | None = None) -> Any:
        """Run ``action``; its ``<ActionResult>`` as plain data."""
        body = urlencode({"Action": action, "Version": self.api_version, **flatten(params or {})})

        def attempt() -> Any:
            try:
                status, data = self._send(body)
            except urllib3.exceptions.HTTPError as exc:
                raise AwsRetryableError(f"{action}: {exc}") from None
            if status < 300:
                return self._result(action, data)
            code, message = self._error(data)
            if status < 500 and code not in RETRYABLE_CODES:
                raise AwsError(action, code, message, status)
            raise AwsRetryableError(f"{action}: HTTP {status} {code}: {message}")

        # Jittered delays of about 0.2 s, then 0.4 s, ... between tries.
        backoff = Backoff(0.4, 3.2)
        return retry_until(
            attempt,
            retry_on=AwsRetryableError,
            next_delay=backoff.next_delay,
            attempts=self.attempts,
        )

    def _send(self, body: str) -> tuple[int, bytes]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(
            "POST",
            self.endpoint,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        SigV4Auth(self.credentials(), self.service, self.region).add_auth(request)
        resp = self._http.request(
            "POST", self.endpoint, body=body.encode(), headers=dict(request.headers.items())
        )
        return resp.status, resp.data

    @staticmethod
    def _result(action: str, data: bytes) -> Any:
        root = ET.fromstring(data)
        for child in root:
            if _local(child.tag) == f"{action}Result":
                return xml_to_data(child)
        return {}

    @staticmethod
    def _error(data: bytes) -> tuple[str, str]:
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return "Unknown", data[:200].decode(errors="replace")
        code = next((e.text for e in root.iter() if _local(e.tag) == "Code"), None)
        message = next((e.text for e in root.iter() if _local(e.tag) == "Message"), None)
        return code or "Unknown", message or ""
