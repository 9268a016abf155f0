"""Optional webhook: a JSON summary POSTed for each interruption and drain.

Best effort and never in the way: each POST runs in its own daemon thread
with a short timeout and up to three tries, so a slow receiver cannot delay
a drain that has two minutes to finish. The documents arrive in the order the
agent sent them (``event`` before ``drain_started`` before ``drain_finished``):
each thread first waits for the one before it, which a CI run showed is not
otherwise given when two POSTs race.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3

from spotrelay.core.retry import retry_until

log = logging.getLogger("spotrelay.agent.webhook")


class WebhookError(Exception):
    """One POST that did not get a 2xx answer."""


class Webhook:
    def __init__(
        self,
        url: str | None,
        *,
        timeout_s: float = 5.0,
        dry_run: bool = False,
        base: dict[str, Any] | None = None,
        on_failure: Callable[[], None] | None = None,
        tries: int = 3,
    ) -> None:
        self.url = url
        self.dry_run = dry_run
        self.base = dict(base or {})
        self.on_failure = on_failure or (lambda: None)
        self.tries = tries
        self._http = urllib3.PoolManager(num_pools=1, maxsize=2, retries=False)
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 2.0), read=timeout_s)
        self._threads: list[threading.Thread] = []

    def send(self, kind: str, **fields: Any) -> None:
        """Queue one summary: ``{"kind": ..., "node_id": ..., "instance_id": ..., ...}``."""
        if not self.url:
            return
        doc = {**self.base, "kind": kind, "at": time.time(), **fields}
        if self.dry_run:
            log.info("dry run: would POST webhook %s", kind)
            return
        self._threads = [t for t in self._threads if t.is_alive()]
        before = self._threads[-1] if self._threads else None
        thread = threading.Thread(
            target=self._post_after, args=(before, doc), name="webhook", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _post_after(self, before: threading.Thread | None, doc: dict[str, Any]) -> None:
        """POST ``doc`` once the document sent before it has gone (or given up)."""
        if before is not None:
            before.join()
        self._post(doc)

    def _post(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, default=str).encode()
        delays = itertools.count(0.5, 0.5)  # 0.5 s, 1 s, ...: a receiver restarting catches up
        try:
            retry_until(
                lambda: self._post_once(body),
                retry_on=WebhookError,
                next_delay=lambda: next(delays),
                attempts=self.tries,
                on_retry=lambda exc, delay: log.warning("%s; retrying in %.1fs", exc, delay),
            )
        except WebhookError as exc:
            log.warning("%s; giving up after %d tries", exc, self.tries)
            self.on_failure()

    def _post_once(self, body: bytes) -> None:
        try:
            resp = self._http.request(
                "POST",
                self.url,  # type: ignore[arg-type]
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WebhookError(f"webhook POST failed: {exc}") from None
        if not 200 <= resp.status < 300:
            raise WebhookError(f"webhook answered {resp.status}")

    def flush(self, timeout: float = 2.0) -> None:
        """Give queued POSTs a moment to go out (at exit)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
