"""The deploy tool: ``spotrelay up | down | status | preflight | scale`` (the ``deploy`` extra).

It runs on the operator's machine, never on a node or a router, so it is a
component of its own: a GPU node's or router's install carries none of it.
"""
