"""Helpers shared by the test modules (and the benchmarks); test_*.py files define none.

``from tests.support import X`` gives the process helpers of :mod:`.services`
(start a router, a simulator, an agent, moto). The other helpers are imported
from their own module, so a test pulls in only what it uses:

- :mod:`.clock`: a hand-moved clock for the I/O-free cores;
- :mod:`.sse`: the events of a Server-Sent Events body, read with the router's parser;
- :mod:`.aws`: credentials for moto, scripted and recording AWS fronts, Auto Scaling groups;
- :mod:`.agent_node`: an agent with its IMDS emulator, engine and router, as a unit;
- :mod:`.deploy`: the deploy CLI against moto;
- :mod:`.controller`: the controller's Auto Scaling groups, documented events, partial-update front;
- :mod:`.fake_engine`, :mod:`.raw_server`, :mod:`.hostile_engine`: scripted HTTP engines for what
  no simulator fault makes (the last: malformed, endless and dripping answers);
- :mod:`.router_fakes`, :mod:`.router_client`: the router's service over fake node connections;
- :mod:`.resume_fleet`: a router in front of simulator engines, for stream resumption;
- :mod:`.netns`: network namespaces for partition tests.
"""

from .services import (
    AUTOSCALING_NS,
    HOST,
    ROUTER_TOKEN,
    AgentProcess,
    MotoFront,
    Service,
    metric,
    moto_server,
    post_json,
    register_node,
    router_nodes,
    running,
    scaling_activities_xml,
    scrape,
    start_agent,
    start_imds,
    start_router,
    start_service,
    start_sim_vllm,
)

__all__ = [
    "AUTOSCALING_NS",
    "HOST",
    "ROUTER_TOKEN",
    "AgentProcess",
    "MotoFront",
    "Service",
    "metric",
    "moto_server",
    "post_json",
    "register_node",
    "router_nodes",
    "running",
    "scaling_activities_xml",
    "scrape",
    "start_agent",
    "start_imds",
    "start_router",
    "start_service",
    "start_sim_vllm",
]
