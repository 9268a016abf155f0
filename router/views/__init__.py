"""The router's HTTP surface as Flask blueprints, put together by ``app.create_app``.

One blueprint per plane: :mod:`.api` (the data plane: every endpoint of
:mod:`spotrelay.router.endpoints`), :mod:`.control` (node registration and
drains, node token) and :mod:`.ops` (health, readiness, metrics). The views
are thin: what crosses them (which listener serves what, API keys and the
node token, request loops, body limits, error shapes and rejection counts)
is a request hook, an error handler or a small function of
:mod:`.listeners`, :mod:`.body` and :mod:`.errors`; the work is
:class:`~spotrelay.router.service.RouterService`'s.
"""
