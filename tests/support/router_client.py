"""The router's Flask app on Flask's test client, with :mod:`.router_fakes` as its nodes.

Shared by the route tests (``test_router_app.py``, ``test_router_dataplane.py``):
the HTTP layer (status codes, headers, error shapes) without gunicorn or sockets.
"""

from __future__ import annotations

from spotrelay.router.app import create_app
from spotrelay.router.service import RouterService

from .router_fakes import A, FakeFleet, fast_config, report

#: The node token :func:`tests.support.router_fakes.fast_config` configures.
TOKEN = "node-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client_for(**sections):
    """A test client, its RouterService and FakeFleet; ``sections`` override the config."""
    fleet = FakeFleet()
    svc = RouterService(fast_config(**sections), TOKEN, pool_factory=fleet.pool_factory)
    app = create_app(svc)
    return app.test_client(), svc, fleet


def put(client, node_id="a", url=A, models=("m",), state="ready", headers=AUTH):
    """Register (or re-report) a node through ``PUT /nodes/<id>``, as an agent does."""
    return client.put(f"/nodes/{node_id}", json=report(url, list(models), state), headers=headers)


def openai_error_of(resp):
    """The ``error`` object of a data-plane 4xx/5xx, asserting it has OpenAI's shape."""
    doc = resp.get_json()
    assert set(doc) == {"error"} and {"message", "type", "param", "code"} <= set(doc["error"])
    return doc["error"]
