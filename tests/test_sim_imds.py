"""``spotrelay sim imds``: the IMDSv2 contract, driven by botocore's own IMDS client.

Two layers: :class:`ImdsState` with a fake clock for the time rules (no
waiting), and one real emulator process on loopback for the HTTP contract.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

from spotrelay.core import cli
from spotrelay.core.config import ConfigError, load
from spotrelay.sim.imds_control import ControlError
from spotrelay.sim.imds_format import aws_event_time, iso_utc
from spotrelay.sim.imds_instance import InstanceInfo, stable_instance_id
from spotrelay.sim.imds_settings import ImdsEmulatorConfig
from spotrelay.sim.imds_state import ImdsState, Reply, Stall
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support.clock import Clock

from .support import Service, start_imds

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
MD = "/latest/meta-data/"
EVENT_TIME_FMT = "%d %b %Y %H:%M:%S GMT"


# ---------------------------------------------------------------------------- state


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


def make_state(clock: Clock, **kw) -> ImdsState:
    lifecycle = kw.pop("lifecycle", "spot")
    info = InstanceInfo("i-0123456789abcdef0", lifecycle=lifecycle, iam_role=kw.pop("role", None))
    return ImdsState(info, clock=clock, **kw)


def token_of(state: ImdsState, ttl: int = 60) -> str:
    reply = state.put_token({TTL.lower(): str(ttl)})
    assert reply.status == 200
    return reply.body


def get(state: ImdsState, path: str, token: str) -> Reply:
    result = state.handle("GET", path, {TOKEN: token})
    assert isinstance(result, Reply)
    return result


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-1", "abc", "", "1.5"])
def test_state_token_ttl_out_of_range_is_400(clock, ttl):
    state = make_state(clock)
    headers = {} if ttl is None else {TTL: ttl}
    reply = state.handle("PUT", "/latest/api/token", headers)
    assert reply.status == 400
    assert state.counts["bad_request_400"] == 1 and not state.tokens


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_state_token_ttl_bounds_accepted_and_echoed(clock, ttl):
    reply = make_state(clock).handle("PUT", "/latest/api/token", {TTL: ttl})
    assert reply.status == 200 and reply.headers[TTL] == ttl and len(reply.body) >= 40


def test_state_token_expires_exactly_at_ttl(clock):
    state = make_state(clock)
    token = token_of(state, ttl=10)
    clock.now += 9.9
    ok = get(state, MD + "instance-id", token)
    assert ok.status == 200 and ok.headers[TTL] == "1"
    clock.now += 0.1
    assert get(state, MD + "instance-id", token).status == 401
    assert state.counts["unauthorized_401"] == 1


def test_state_spot_time_is_frozen_at_notice_plus_lead(clock):
    state = make_state(clock)
    token = token_of(state, ttl=21600)
    assert get(state, MD + "spot/instance-action", token).status == 404
    state.control("spot", {"action": "terminate", "lead_s": 120})
    expected = iso_utc(clock.now + 120)
    for _ in range(3):
        clock.now += 50  # even past the deadline the notice keeps its time
        doc = json.loads(get(state, MD + "spot/instance-action", token).body)
        assert doc == {"action": "terminate", "time": expected}
        assert get(state, MD + "spot/termination-time", token).body == expected


def test_state_spot_stop_has_no_termination_time_and_hibernate_no_warning(clock):
    state = make_state(clock)
    token = token_of(state)
    state.control("spot", {"action": "stop"})
    assert json.loads(get(state, MD + "spot/instance-action", token).body)["action"] == "stop"
    assert get(state, MD + "spot/termination-time", token).status == 404
    assert get(state, MD + "spot/", token).body == "instance-action"
    state.control("spot", {"action": "hibernate"})
    doc = json.loads(get(state, MD + "spot/instance-action", token).body)
    assert doc == {"action": "hibernate", "time": iso_utc(clock.now)}


def test_state_spot_events_need_a_spot_instance(clock):
    state = make_state(clock, lifecycle="on-demand")
    for action in ("spot", "rebalance"):
        with pytest.raises(ControlError) as exc:
            state.control(action, {})
        assert exc.value.status == 409


def test_state_rebalance_notice_time_is_first_notice(clock):
    state = make_state(clock)
    token = token_of(state)
    assert get(state, MD + "events/recommendations/rebalance", token).status == 404
    first = iso_utc(clock.now)
    state.control("rebalance", {})
    clock.now += 30
    state.control("rebalance", {"lead_s": 90})  # accepted, ignored; still one recommendation
    body = get(state, MD + "events/recommendations/rebalance", token).body
    assert json.loads(body) == {"noticeTime": first}


def test_state_target_lifecycle_state(clock):
    state = make_state(clock)
    token = token_of(state)
    path = MD + "autoscaling/target-lifecycle-state"
    assert get(state, path, token).body == "InService"
    state.control("lifecycle", {"state": "Terminated"})
    assert get(state, path, token).body == "Terminated"
    with pytest.raises(ControlError, match="must be one of"):
        state.control("lifecycle", {"state": "Bogus"})
    state.control("lifecycle", {"state": None})  # detached from any ASG: item gone
    assert get(state, path, token).status == 404
    outside = make_state(clock, target_lifecycle_state=None)
    assert get(outside, path, token_of(outside)).status == 404
    assert "autoscaling/" not in get(outside, MD, token_of(outside)).body.split("\n")


def test_state_scheduled_events_format(clock):
    clock.now = 1548061243 - 600  # so NotBefore is AWS's documented example time
    state = make_state(clock)
    token = token_of(state)
    path = MD + "events/maintenance/scheduled"
    assert get(state, path, token).body == "[]"
    state.control("scheduled", {"code": "system-reboot", "not_before_s": 600, "duration_s": 1000})
    state.control("scheduled", {"code": "instance-stop", "not_before_deadline_s": 7200})
    events = json.loads(get(state, path, token).body)
    reboot, stop = events
    assert reboot["NotBefore"] == "21 Jan 2019 09:00:43 GMT"
    assert reboot["NotAfter"] == "21 Jan 2019 09:17:23 GMT"
    assert reboot["Code"] == "system-reboot" and reboot["State"] == "active"
    assert reboot["EventId"].startswith("instance-event-") and len(reboot["EventId"]) == 32
    assert set(reboot) == {"NotBefore", "Code", "Description", "EventId", "NotAfter", "State"}
    assert "NotAfter" not in stop and "NotBeforeDeadline" in stop
    assert aws_event_time(1549011903) == "1 Feb 2019 09:05:03 GMT"  # day is not zero-padded


def test_state_outages(clock):
    state = make_state(clock)
    token = token_of(state)
    state.control("outage", {"mode": "error", "status": 503, "duration_s": 5})
    assert get(state, MD + "instance-id", token).status == 503
    assert state.handle("PUT", "/latest/api/token", {TTL: "60"}).status == 503
    clock.now += 5
    assert get(state, MD + "instance-id", token).status == 200
    state.control("outage", {"mode": "stall", "duration_s": 2})
    stall = state.handle("GET", MD + "instance-id", {TOKEN: token})
    assert stall == Stall(2.0)
    clock.now += 2
    assert get(state, MD + "instance-id", token).body == "i-0123456789abcdef0"
    assert state.counts["outage_hits"] == 3


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [
        ("spot", {"action": "explode"}, "'action' must be one of"),
        ("spot", {"lead_s": "soon"}, "'lead_s' must be a number"),
        ("spot", {"lead_s": -1}, "between"),
        ("spot", {"lead": 5}, "unknown key 'lead'"),
        ("spot", [1], "JSON object"),
        ("lifecycle", {}, "'state' is required"),
        ("scheduled", {"code": "reboot"}, "'code' must be one of"),
        ("outage", {"mode": "error"}, "'duration_s' is required"),
        ("outage", {"mode": "error", "status": 200, "duration_s": 1}, "between 400 and 599"),
        ("outage", {"mode": "stall", "duration_s": 0}, "must be > 0"),
        ("revoke_tokens", {"all": True}, "unknown key"),
    ],
)
def test_state_control_validation(clock, action, body, message):
    with pytest.raises(ControlError, match=message) as exc:
        make_state(clock).control(action, body)
    assert exc.value.status == 400


def test_state_listings_and_paths(clock):
    state = make_state(clock, role="node-role")
    token = token_of(state)
    listing = get(state, MD, token).body.split("\n")
    assert listing == sorted(listing)
    assert {"instance-id", "placement/", "events/", "iam/", "autoscaling/"} <= set(listing)
    assert "spot/" not in listing  # appears with the first notice
    assert get(state, "/latest/meta-data", token).body == get(state, MD, token).body
    assert get(state, "/latest/", token).body == "dynamic/\nmeta-data/"
    assert get(state, MD + "placement/availability-zone/", token).body == "us-east-1a"
    assert get(state, MD + "iam/security-credentials/", token).body == "node-role"
    assert get(state, MD + "instance-id/extra", token).status == 404
    assert get(state, "/latest/user-data", token).status == 404
    assert state.handle("PUT", MD + "instance-id", {TOKEN: token}).status == 405
    assert state.handle("GET", "/latest/api/token", {TOKEN: token}).status == 405


def test_state_revoke_and_reset(clock):
    state = make_state(clock)
    token = token_of(state)
    state.control("revoke_tokens", None)
    assert get(state, MD, token).status == 401
    token = token_of(state)
    state.control("spot", {})
    state.control("lifecycle", {"state": "Terminated"})
    state.control("outage", {"mode": "error", "duration_s": 9})
    snap = state.control("reset", {})
    assert snap["events"] == {
        "spot": None,
        "rebalance": None,
        "target_lifecycle_state": "InService",
        "scheduled": [],
    }
    assert snap["outage"] is None and set(snap["counts"].values()) == {0}
    assert get(state, MD + "instance-id", token).status == 200  # tokens survive a reset


def test_config_validation_and_env():
    cfg = load(ImdsEmulatorConfig, env={"SPOTRELAY_INSTANCE_AZ": "eu-west-2b"})
    assert cfg.instance.az == "eu-west-2b" and cfg.server.port == 1338
    for key, bad in [("az", "moon-1"), ("id", "x-123"), ("local_ipv4", "300.1.1.1")]:
        with pytest.raises(ConfigError, match=f"instance.{key}"):
            load(ImdsEmulatorConfig, env={}, overrides={"instance": {key: bad}})
    assert cli.main(["sim", "imds", "--az", "nowhere"]) == 2


# ---------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One emulator for the module (each test resets it): a spot g6 in eu-west-2b."""
    logdir: Path = tmp_path_factory.mktemp("imds-logs")
    with ProcessGroup() as group:
        yield start_imds(group, logdir, "--az", "eu-west-2b", "--iam-role", "spotrelay-node")


@pytest.fixture
def imds(server: Service) -> Service:
    requests.post(server.url + "/_control/reset", timeout=5).raise_for_status()
    return server


def put_token(imds: Service, ttl: str | None = "60", **headers: str) -> requests.Response:
    if ttl is not None:
        headers[TTL] = ttl
    return requests.put(imds.url + "/latest/api/token", headers=headers, timeout=5)


def read(imds: Service, path: str, token: str | None, **kw) -> requests.Response:
    headers = {TOKEN: token} if token is not None else {}
    return requests.get(imds.url + path, headers=headers, timeout=kw.pop("timeout", 5), **kw)


def ctl(imds: Service, action: str, body: object | None = None) -> dict:
    resp = requests.post(f"{imds.url}/_control/{action}", json=body, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def state_of(imds: Service) -> dict:
    return requests.get(imds.url + "/_control/state", timeout=5).json()


def test_botocore_fetches_role_credentials_with_imdsv2(imds):
    fetcher = InstanceMetadataFetcher(
        timeout=2, num_attempts=1, base_url=imds.url, config={"ec2_metadata_v1_disabled": True}
    )
    creds = fetcher.retrieve_iam_role_credentials()
    assert creds["role_name"] == "spotrelay-node"
    assert creds["access_key"].startswith("ASIA") and creds["secret_key"] and creds["token"]
    expiry = dt.datetime.strptime(creds["expiry_time"], "%Y-%m-%dT%H:%M:%SZ")
    assert expiry > dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=5)
    counts = state_of(imds)["counts"]
    assert counts["token_puts"] == 1 and counts["unauthorized_401"] == 0


def test_boto3_default_credential_chain_uses_the_emulator(imds, monkeypatch, tmp_path):
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    monkeypatch.setenv("AWS_EC2_METADATA_V1_DISABLED", "true")
    creds = boto3.Session().get_credentials()
    assert creds is not None and creds.method == "iam-role"
    assert creds.get_frozen_credentials().access_key.startswith("ASIA")


def test_botocore_region_and_a_hanging_imds(imds):
    assert (
        InstanceMetadataRegionFetcher(
            timeout=2, num_attempts=1, base_url=imds.url
        ).retrieve_region()
        == "eu-west-2"
    )
    # While IMDS hangs, botocore's fetcher times out and reports no region...
    ctl(imds, "outage", {"mode": "stall", "duration_s": 1.0})
    impatient = InstanceMetadataRegionFetcher(timeout=0.2, num_attempts=1, base_url=imds.url)
    assert impatient.retrieve_region() is None
    # ...and gets it again once IMDS answers.
    wait_until(impatient.retrieve_region, timeout=5, what="IMDS to answer again")
    assert state_of(imds)["counts"]["outage_hits"] >= 2


def test_token_put_contract(imds):
    resp = put_token(imds, "21600")
    assert resp.status_code == 200 and resp.headers[TTL] == "21600"
    assert resp.headers["Content-Type"] == "text/plain"
    for bad in ("0", "21601", "sixty", None):
        assert put_token(imds, bad).status_code == 400, bad
    assert put_token(imds, "60", **{"X-Forwarded-For": "10.0.0.9"}).status_code == 403
    counts = state_of(imds)["counts"]
    assert counts["bad_request_400"] == 4 and counts["forbidden_403"] == 1
    assert counts["token_puts"] == 1


def test_reads_need_a_live_token(imds):
    assert read(imds, MD + "instance-id", None).status_code == 401
    assert read(imds, MD + "instance-id", "not-a-token").status_code == 401
    token = put_token(imds, "1").text
    first = read(imds, MD + "instance-id", token)
    assert first.status_code == 200 and first.headers[TTL] == "1"
    wait_until(
        lambda: read(imds, MD + "instance-id", token).status_code == 401,
        timeout=5,
        what="a 1 s token to expire",
    )
    assert state_of(imds)["counts"]["unauthorized_401"] >= 3


def test_revoked_tokens_get_401_until_refetched(imds):
    token = put_token(imds).text
    assert read(imds, MD + "instance-id", token).status_code == 200
    assert ctl(imds, "revoke_tokens")["tokens"] == {"active": 0}
    assert read(imds, MD + "instance-id", token).status_code == 401
    assert read(imds, MD + "instance-id", put_token(imds).text).status_code == 200


def test_instance_data_listings_and_head(imds):
    token = put_token(imds).text
    instance_id = read(imds, MD + "instance-id", token)
    assert instance_id.headers["Content-Type"] == "text/plain"
    # The default id is stable for host:port, so restarts keep the node's identity.
    assert instance_id.text == stable_instance_id(f"127.0.0.1:{imds.port}")
    assert read(imds, MD + "instance-type", token).text == "g6.xlarge"
    assert read(imds, MD + "local-ipv4", token).text == "127.0.0.1"
    assert read(imds, MD + "placement/availability-zone", token).text == "eu-west-2b"
    assert read(imds, MD + "placement/region", token).text == "eu-west-2"
    assert read(imds, MD + "instance-life-cycle", token).text == "spot"
    assert (
        read(imds, MD + "local-hostname", token).text == "ip-127-0-0-1.eu-west-2.compute.internal"
    )
    doc = json.loads(read(imds, "/latest/dynamic/instance-identity/document", token).text)
    assert doc["instanceId"] == instance_id.text and doc["region"] == "eu-west-2"
    assert doc["privateIp"] == "127.0.0.1" and doc["instanceType"] == "g6.xlarge"
    assert {"accountId", "architecture", "imageId", "pendingTime", "version"} <= set(doc)
    listing = read(imds, MD, token).text.split("\n")
    assert "placement/" in listing and "instance-id" in listing and "spot/" not in listing
    assert read(imds, MD + "placement/", token).text == "availability-zone\nregion"
    head = requests.head(imds.url + MD + "instance-id", headers={TOKEN: token}, timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(instance_id.text))
    no_token = requests.head(imds.url + MD + "instance-id", timeout=5)
    assert no_token.status_code == 401
    assert read(imds, MD + "no-such-thing", token).status_code == 404
    assert read(imds, "/", token).text == "latest/"


def test_spot_notice_time_is_frozen(imds):
    token = put_token(imds).text
    assert read(imds, MD + "spot/instance-action", token).status_code == 404
    assert read(imds, MD + "spot/termination-time", token).status_code == 404
    before = time.time()
    snap = ctl(imds, "spot", {"action": "terminate", "lead_s": 120})
    notice = read(imds, MD + "spot/instance-action", token)
    assert notice.headers["Content-Type"] == "text/plain"
    doc = notice.json()
    assert doc["action"] == "terminate" and doc == {"action": "terminate", "time": doc["time"]}
    at = dt.datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert before + 118 <= at.timestamp() <= time.time() + 121
    assert snap["events"]["spot"]["time"] == doc["time"]
    # A wall-clock second later the notice is byte-for-byte the same (no sliding).
    wait_until(lambda: time.time() >= before + 1.2, timeout=5, what="a second to pass")
    assert read(imds, MD + "spot/instance-action", token).text == notice.text
    assert read(imds, MD + "spot/termination-time", token).text == doc["time"]
    assert "spot/" in read(imds, MD, token).text.split("\n")


def test_rebalance_lifecycle_and_scheduled_over_http(imds):
    token = put_token(imds).text
    rebalance = MD + "events/recommendations/rebalance"
    assert read(imds, rebalance, token).status_code == 404
    ctl(imds, "rebalance", {})
    notice = dt.datetime.strptime(
        read(imds, rebalance, token).json()["noticeTime"], "%Y-%m-%dT%H:%M:%SZ"
    )
    assert abs(notice.replace(tzinfo=dt.UTC).timestamp() - time.time()) < 5

    target = MD + "autoscaling/target-lifecycle-state"
    assert read(imds, target, token).text == "InService"
    assert ctl(imds, "lifecycle", {"state": "Terminated"})["events"]["target_lifecycle_state"] == (
        "Terminated"
    )
    assert read(imds, target, token).text == "Terminated"

    scheduled = MD + "events/maintenance/scheduled"
    assert read(imds, scheduled, token).json() == []
    ctl(imds, "scheduled", {"code": "system-reboot", "not_before_s": 600, "duration_s": 3600})
    (event,) = read(imds, scheduled, token).json()
    start = dt.datetime.strptime(event["NotBefore"], EVENT_TIME_FMT).replace(tzinfo=dt.UTC)
    end = dt.datetime.strptime(event["NotAfter"], EVENT_TIME_FMT).replace(tzinfo=dt.UTC)
    assert abs(start.timestamp() - (time.time() + 600)) < 5
    assert (end - start).total_seconds() == 3600
    assert event["Code"] == "system-reboot" and event["State"] == "active"
    assert read(imds, MD + "events/maintenance/history", token).json() == []


def test_outage_error_then_recovery(imds):
    token = put_token(imds).text
    ctl(imds, "outage", {"mode": "error", "status": 503, "duration_s": 1.0})
    assert read(imds, MD + "instance-id", token).status_code == 503
    assert put_token(imds).status_code == 503
    assert requests.get(imds.url + "/_control/health", timeout=5).status_code == 200
    wait_until(
        lambda: read(imds, MD + "instance-id", token).status_code == 200,
        timeout=5,
        what="the outage to end",
    )
    assert state_of(imds)["outage"] is None


def test_outage_stall_times_clients_out_then_answers(imds):
    token = put_token(imds).text
    ctl(imds, "outage", {"mode": "stall", "duration_s": 1.5})
    with pytest.raises(requests.exceptions.ReadTimeout):
        read(imds, MD + "instance-id", token, timeout=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.put(imds.url + "/latest/api/token", headers={TTL: "60"}, timeout=0.3)
    assert state_of(imds)["outage"]["mode"] == "stall"
    # A patient client is answered once the stall ends.
    started = time.monotonic()
    assert read(imds, MD + "instance-id", token, timeout=10).status_code == 200
    assert time.monotonic() - started < 5
    assert read(imds, MD + "instance-id", token, timeout=1).status_code == 200


def test_reset_clears_events_and_counters(imds):
    token = put_token(imds).text
    ctl(imds, "spot", {})
    ctl(imds, "rebalance")
    ctl(imds, "scheduled", {"code": "instance-retirement"})
    ctl(imds, "lifecycle", {"state": "Standby"})
    snap = ctl(imds, "reset")
    assert snap["events"]["spot"] is None and snap["events"]["scheduled"] == []
    assert snap["events"]["target_lifecycle_state"] == "InService"
    assert snap["counts"]["token_puts"] == 0
    assert read(imds, MD + "spot/instance-action", token).status_code == 404
    assert read(imds, MD + "events/recommendations/rebalance", token).status_code == 404


def test_control_rejects_bad_bodies_clearly(imds):
    def post(action: str, data: str) -> requests.Response:
        return requests.post(f"{imds.url}/_control/{action}", data=data, timeout=5)

    bad_json = post("spot", "{not json")
    assert bad_json.status_code == 400 and "body must be JSON" in bad_json.json()["error"]
    wrong = post("spot", json.dumps({"action": "explode"}))
    assert wrong.status_code == 400 and "'action' must be one of" in wrong.json()["error"]
    unknown = post("nuke", "{}")
    assert unknown.status_code == 404 and "unknown control action" in unknown.json()["error"]
    assert post("lifecycle", json.dumps({"state": 3})).status_code == 400
    assert requests.get(imds.url + "/_control/spot", timeout=5).status_code == 405
    assert post("state", "{}").status_code == 405
    assert state_of(imds)["events"]["spot"] is None
