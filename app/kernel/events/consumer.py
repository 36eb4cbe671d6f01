"""Phase 3, second half: consumers apply the stream's events exactly once (ADR 0004).

A consumer (`flask outbox consume MODULE`) reads with its module's consumer group, applies
each event and records its id in its own database's inbox in ONE transaction, then XACKs.
A consumer killed between apply and ack gets the entry again and finds it in the inbox:
applied once. A database outage is waited out on the same entry; an event the handler keeps
failing on is kept in the consumer's database as a dead letter, then acknowledged.

Order: one consumer per group (a lock in Redis) applies in stream order, own pending
entries first, a failed entry holding back the ones behind it. With one relay publishing in
`seq` order, events of one aggregate are applied in the order their transactions committed.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.kernel.db import transaction
from app.kernel.events import inbox
from app.kernel.events.envelope import Envelope
from app.kernel.events.stream import ensure_group, envelope_of_entry
from app.kernel.faults import failpoint
from app.kernel.ownership import acting_as

log = logging.getLogger(__name__)


class EventConsumer:
    """Applies a stream's events for one module, exactly once, in stream order.

    The module is the consumer group. One consumer of a group works at a time: it holds a
    lock in Redis (`<stream>:consumer:<group>`) whose value is its name, renewed every round
    and released on a clean exit; another consumer waits for it. The name is the
    consumer's identity (as in Redis): a restarted consumer with the same name resumes at
    once with the entries it had received but not acknowledged; one with another name
    takes over when the lock expires, first claiming whatever the previous one left pending.
    Run one process per name.
    """

    def __init__(
        self,
        module: str,
        sessions: sessionmaker[Session],
        redis_client: Any,
        *,
        stream: str,
        name: str | None = None,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 0,
        lock_ms: int = 15_000,
        max_attempts: int = 3,
    ) -> None:
        self.module = module
        self.sessions = sessions
        self.redis = redis_client
        self.stream = stream
        self.group = module
        self.name = name or socket.gethostname()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.lock_ms = lock_ms
        self.max_attempts = max_attempts
        self.handlers = inbox.handlers_of(module)
        self._failures: dict[str, int] = {}
        self.waiting = False  # another consumer of the group held the lock last round
        self._lock_key = f"{stream}:consumer:{self.group}"
        self._renew_lock = redis_client.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
        )
        self._release_lock = redis_client.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end"
        )

    def run(
        self, *, stop: Callable[[], bool] = lambda: False, max_events: int | None = None
    ) -> int:
        """Consume until `stop()` (or `max_events` applied or skipped); returns how many.
        A failing Redis or database costs a pause, never the loop."""
        handled = 0
        failures = 0
        try:
            while not stop() and (max_events is None or handled < max_events):
                try:
                    limit = None if max_events is None else max_events - handled
                    handled += self.poll_once(limit=limit)
                    failures = 0
                except Exception as exc:  # Redis or the database away: back off, retry
                    failures += 1
                    log.warning(
                        "outbox consumer %s: %s (retrying)", self.name, str(exc).splitlines()[0]
                    )
                    time.sleep(min(0.2 * 2**failures, 10))
        finally:
            self.release()
        return handled

    def release(self) -> None:
        """Give the group's lock up (if held), so a waiting consumer starts at once."""
        import redis

        try:
            self._release_lock(keys=[self._lock_key], args=[self.name])
        except redis.RedisError as exc:  # it expires by itself
            log.warning("outbox consumer %s: lock not released: %s", self.name, exc)

    def poll_once(self, limit: int | None = None) -> int:
        """One round: own pending entries first (after a crash), then entries a previous
        consumer left pending, then new ones (waiting up to block_ms). Returns how many
        entries it took on (applied, skipped as duplicates, or failed and left pending);
        0 when there was nothing to read or another consumer holds the lock."""
        self.waiting = not self._hold_lock()
        if self.waiting:
            time.sleep(self.block_ms / 1000)
            return 0
        ensure_group(self.redis, self.stream, self.group)
        count = min(self.batch_size, limit) if limit else self.batch_size
        entries = self._read("0", count)
        if not entries:
            entries = self._claim_abandoned(count)
        if not entries:
            entries = self._read(">", count, block=self.block_ms)
        for done, (entry_id, fields) in enumerate(entries):
            # Renewed per entry: a consumer that lost the lock stops before applying more.
            if done and not self._hold_lock():
                self.waiting = True
                return done
            if not self.handle(entry_id, fields):
                return done + 1  # left pending; those behind it wait, to keep the order
        return len(entries)

    def _hold_lock(self) -> bool:
        if self.redis.set(self._lock_key, self.name, nx=True, px=self.lock_ms):
            return True
        return bool(self._renew_lock(keys=[self._lock_key], args=[self.name, self.lock_ms]))

    def _read(self, start: str, count: int, block: int | None = None) -> list:
        answer = self.redis.xreadgroup(
            self.group, self.name, {self.stream: start}, count=count, block=block
        )
        return answer[0][1] if answer else []

    def _claim_abandoned(self, count: int) -> list:
        answer = self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, "0-0", count=count
        )
        return [entry for entry in answer[1] if entry[1]] if answer else []

    def handle(self, entry_id: str, fields: dict[str, str] | None) -> bool:
        """Apply one entry (unless its event is in the inbox already), then acknowledge it.
        False when it failed and stays pending, to be retried next round."""
        if fields:
            event = envelope_of_entry(fields)
            handler = self.handlers.get(event.type)
            if handler is not None and not self._apply(entry_id, event, handler):
                return False
        failpoint("outbox.consume.after_apply")
        self.redis.xack(self.stream, self.group, entry_id)
        return True

    def _apply(self, entry_id: str, event: Envelope, handler: inbox.Handler) -> bool:
        """Apply the event and record it in the inbox, in one transaction. A database that
        is away is an outage (raised: the loop backs off and comes back to this entry), not
        a fault of the event; an event that fails `max_attempts` times is set aside in the
        dead letters of this database (durably: its acknowledgement then loses nothing)."""
        try:
            # The handler's rows are flushed at the commit: still as the consumer's module.
            with acting_as(self.module), self.sessions() as session, transaction(session):
                inbox.apply_once(session, self.module, event, handler)
            self._failures.pop(entry_id, None)
            return True
        except OperationalError:
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            if isinstance(exc, IntegrityError) and self._processed(event.id):
                return True  # a racing consumer recorded it first: applied once, by them
            error: Exception = exc
        except Exception as exc:
            error = exc
        failures = self._failures[entry_id] = self._failures.get(entry_id, 0) + 1
        log.error(
            "outbox consumer %s: event %s failed (%d of %d): %s",
            self.name,
            event.id,
            failures,
            self.max_attempts,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        if failures < self.max_attempts:
            return False
        with acting_as(self.module), self.sessions() as session, transaction(session):
            inbox.record_dead_letter(session, self.module, event, repr(error))
        self._failures.pop(entry_id, None)
        log.error("outbox consumer %s: event %s set aside as a dead letter", self.name, event.id)
        return True

    def _processed(self, event_id: str) -> bool:
        with acting_as(self.module), self.sessions() as session:
            return inbox.was_processed(session, self.module, event_id)
