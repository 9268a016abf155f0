"""The capacity controller: on-demand fallback and off-node interruption drains.

It runs as an AWS Lambda function (created by the gpu-pool module from this
package) and, locally, inside ``spotrelay demo``. The decisions are plain
code with an injected clock (:mod:`.fallback`, :mod:`.interruptions`); the
AWS and router I/O lives in thin adapters (:mod:`.aws`, :mod:`.routers`).
"""
