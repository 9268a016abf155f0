"""AWS APIs moto does not serve, answered on loopback with AWS's documented shapes.

moto 5 has no EC2 quotas in Service Quotas (GetServiceQuota answers
NoSuchResourceException for service code ec2) and no Lambda
GetAccountSettings ("Not yet implemented"). This server speaks their real
wire protocols, so botocore builds and parses real requests and responses:

- Service Quotas (JSON 1.1, ``X-Amz-Target: ServiceQuotasV20190624.<Op>``):
  GetServiceQuota answers the account's applied value, or AWS's error
  ``NoSuchResourceException`` when none is applied, and
  GetAWSDefaultServiceQuota the default; the ``Quota`` object is the one in
  the Service Quotas API reference (and the CLI's get-aws-default-service-quota
  example);
- Lambda GetAccountSettings (REST JSON, ``GET /2016-08-19/account-settings/``):
  ``AccountLimit`` / ``AccountUsage`` as in the Lambda API reference.

Point boto3 at it per service with ``AWS_ENDPOINT_URL_SERVICE_QUOTAS`` and
``AWS_ENDPOINT_URL_LAMBDA`` while ``AWS_ENDPOINT_URL`` names moto.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUOTA_NAMES = {
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-7212CCBC": "All P Spot Instance Requests",
    "L-417A185B": "Running On-Demand P instances",
}


@dataclass
class Account:
    """What the server answers: applied quota values, defaults, Lambda limits."""

    region: str = "us-east-1"
    applied: dict[str, float] = field(default_factory=dict)  # quota code -> vCPUs
    defaults: dict[str, float] = field(default_factory=dict)
    concurrent_executions: int = 1000
    unreserved: int = 1000
    requests: list[str] = field(default_factory=list)

    def quota(self, code: str, value: float) -> dict:
        return {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{self.region}:123456789012:ec2/{code}",
            "QuotaCode": code,
            "QuotaName": QUOTA_NAMES.get(code, code),
            "Value": value,
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
            "UsageMetric": {
                "MetricNamespace": "AWS/Usage",
                "MetricName": "ResourceCount",
                "MetricDimensions": {"Class": "G/Spot", "Resource": "vCPU", "Service": "EC2",
                                     "Type": "Resource"},
                "MetricStatisticRecommendation": "Maximum",
            },
        }  # fmt: skip


def _handler(account: Account) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict, kind: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # Service Quotas, JSON 1.1
            target = self.headers.get("X-Amz-Target", "")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            op = target.rpartition(".")[2]
            account.requests.append(op)
            kind = "application/x-amz-json-1.1"
            code = body.get("QuotaCode", "")
            source = {"GetServiceQuota": account.applied,
                      "GetAWSDefaultServiceQuota": account.defaults}.get(op)  # fmt: skip
            if source is None:
                self._send(400, {"__type": "UnknownOperationException"}, kind)
            elif code in source:
                self._send(200, {"Quota": account.quota(code, source[code])}, kind)
            else:
                message = "The request failed because the specified quota does not exist."
                self._send(400, {"__type": "NoSuchResourceException", "message": message}, kind)

        def do_GET(self) -> None:  # Lambda, REST JSON
            account.requests.append(f"GET {self.path}")
            if self.path.rstrip("/") != "/2016-08-19/account-settings":
                self._send(404, {"Type": "User", "message": "not found"}, "application/json")
                return
            self._send(
                200,
                {
                    "AccountLimit": {
                        "TotalCodeSize": 80530636800,
                        "CodeSizeUnzipped": 262144000,
                        "CodeSizeZipped": 52428800,
                        "ConcurrentExecutions": account.concurrent_executions,
                        "UnreservedConcurrentExecutions": account.unreserved,
                    },
                    "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 0},
                },
                "application/json",
            )

    return Handler


@contextlib.contextmanager
def recorded_aws(account: Account) -> Iterator[str]:
    """Serve ``account`` on loopback; yields the endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(account))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
