"""Phase 3 delivery: the outbox relayed to Redis Streams and consumed exactly once.

The caller commits its rows and an event in one transaction (`events.publish`). From there:

- **The relay** (`flask outbox relay`) holds a lease in the database, so one relay publishes
  at a time and events enter the stream in outbox order (`seq`); a second relay waits and
  takes over when the holder stops renewing. It XADDs a batch, then marks it published (re-
  checking the lease in that transaction). A relay killed between the two re-publishes the
  batch next time: delivery is at least once.
- **Consumers** (`flask outbox consume MODULE`) read with a consumer group, apply each event
  and record its id in their own database's inbox in ONE transaction, then XACK. A consumer
  killed between apply and ack gets the entry again and finds it in the inbox: applied once.
  A database outage is waited out on the same entry; an event the handler keeps failing on
  is kept in the consumer's database as a dead letter, then acknowledged.
- **Redis keeps nothing on disk.** An event counts as delivered only when every consumer
  group has acknowledged it (`confirmed_at`), read from the groups' state in one MULTI with
  the stream's epoch key. Entries are added only while that key is the relay's epoch and
  the stream has not gone back before the highest entry reached (a Lua script). When Redis
  comes back empty, or loses entries but keeps the key, a new epoch starts and every event
  published in an older one and not confirmed is published again.

Order: one relay publishes in `seq` order and one consumer per group (a lock in Redis)
applies in stream order, own pending entries first, a failed entry holding back the ones
behind it. So events of one aggregate are applied in the order their transactions committed.
See ADR 0004 and docs/phases.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.kernel import events
from app.kernel.db import transaction, utcnow
from app.kernel.faults import failpoint
from app.kernel.models import DeadLetter, EventLease, OutboxEvent
from app.kernel.ownership import KERNEL, acting_as

log = logging.getLogger(__name__)

StreamId = tuple[int, int]
NOTHING: StreamId = (0, 0)
EVERYTHING: StreamId = (2**63, 0)


def parse_stream_id(text: str) -> StreamId:
    """A Redis stream entry id (`1700000000000-3`) as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def default_name() -> str:
    """A name for this process: host and pid (unique among live processes)."""
    return f"{socket.gethostname()}-{os.getpid()}"


# XADD a batch only while the stream is still the one of the relay's epoch, atomically.
# A Redis that restarted since the epoch was read has no epoch key (or another one): false,
# nothing added. A Redis that kept the key but lost entries (a failover, a restored
# snapshot) has a stream that is gone or ends before the highest entry this epoch reached
# (ARGV[3]): -1, nothing added. Either way the relay starts a new epoch, in which every
# event not yet confirmed is published again.
_PUBLISH_IN_EPOCH = """
if redis.call('get', KEYS[2]) ~= ARGV[1] then return false end
if ARGV[3] ~= '0-0' then
  if redis.call('exists', KEYS[1]) == 0 then return -1 end
  local info = redis.call('xinfo', 'stream', KEYS[1])
  local last
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  local lms, lseq = string.match(last, '(%d+)-(%d+)')
  local hms, hseq = string.match(ARGV[3], '(%d+)-(%d+)')
  lms, lseq, hms, hseq = tonumber(lms), tonumber(lseq), tonumber(hms), tonumber(hseq)
  if lms < hms or (lms == hms and lseq < hseq) then return -1 end
end
local width = tonumber(ARGV[2])
local ids = {}
for i = 4, #ARGV, width do
  ids[#ids + 1] = redis.call('xadd', KEYS[1], '*', unpack(ARGV, i, i + width - 1))
end
return ids
"""


def epoch_key(stream: str) -> str:
    return f"{stream}:epoch"


# --- the relay -----------------------------------------------------------------------


@dataclass
class RelayReport:
    leader: bool = False
    published: int = 0
    confirmed: int = 0
    republished: int = 0  # published in an epoch Redis has forgotten, not confirmed


class OutboxRelay:
    """Publishes outbox events to a Redis stream and confirms them once every group has
    acknowledged them. `run_once()` is one round; `run()` loops until told to stop."""

    LEASE = "outbox-relay"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        redis_client: Any,
        *,
        stream: str,
        groups: Sequence[str],
        batch_size: int = 200,
        lease_seconds: int = 15,
        holder: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.redis = redis_client
        if not groups:
            # Without a group nothing can acknowledge an event, and "published" would have
            # to count as delivered: a Redis restart would then lose it.
            raise ValueError("the relay needs the consumer groups that must acknowledge events")
        self.stream = stream
        self.groups = tuple(groups)
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.holder = holder or f"{default_name()}-{uuid.uuid4().hex[:6]}"
        self._publish_in_epoch = redis_client.register_script(_PUBLISH_IN_EPOCH)
        # The highest entry id this relay knows the stream reached in the current epoch: a
        # stream that reports less has gone back in time (a failover, a restored snapshot).
        self._high_water: tuple[str, StreamId] | None = None
        self._forgotten_before: str | None = None  # the epoch _forget_lost last ran in

    def run(self, *, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        """Relay until `stop()`; a failing Redis or database costs a pause, never the loop.
        On the way out the lease is handed back, so a standby relay takes over at once."""
        failures = 0
        try:
            while not stop():
                try:
                    report = self.run_once()
                    failures = 0
                except Exception as exc:  # an outage: report, back off, try again
                    failures += 1
                    log.warning("outbox relay: %s (retrying)", str(exc).splitlines()[0])
                    time.sleep(min(interval * 2**failures, 10))
                    continue
                if report.published < self.batch_size:
                    time.sleep(interval)
        finally:
            self.release()

    def release(self) -> None:
        """Give the lease up (if held), so another relay need not wait for it to expire."""
        with acting_as(KERNEL), self.sessions() as session, transaction(session):
            session.execute(
                update(EventLease)
                .where(EventLease.name == self.LEASE, EventLease.holder == self.holder)
                .values(expires_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    def run_once(self) -> RelayReport:
        report = RelayReport()
        with acting_as(KERNEL):
            if not self._hold_lease():
                return report
            report.leader = True
            epoch = self._epoch()
            report.republished = self._forget_lost(epoch)
            report.published = self._publish(epoch)
            report.confirmed = self._confirm(epoch)
        return report

    # The lease: a row in event_leases. Whoever holds it (or finds it expired) renews it.
    def _hold_lease(self) -> bool:
        now = utcnow()
        try:
            with self.sessions() as session, transaction(session):
                if self._renew(session, now):
                    return True
                if session.get(EventLease, self.LEASE) is not None:
                    return False  # another relay holds it
                session.add(
                    EventLease(name=self.LEASE, holder=self.holder, expires_at=now + self.lease)
                )
                return True
        except IntegrityError:
            return False  # another relay created it at the same moment

    def _renew(self, session: Session, now: Any) -> bool:
        result = session.execute(
            update(EventLease)
            .where(
                EventLease.name == self.LEASE,
                or_(EventLease.holder == self.holder, EventLease.expires_at < now),
            )
            .values(holder=self.holder, expires_at=now + self.lease)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1

    def _epoch(self) -> str:
        """This Redis instance's epoch (a new one after it lost its data), with every
        consumer group created from the start of the stream."""
        key = epoch_key(self.stream)
        epoch = self.redis.get(key)
        if epoch is None:
            self.redis.set(key, uuid.uuid4().hex, nx=True)
            epoch = self.redis.get(key)
            log.info("outbox relay: stream %s starts epoch %s", self.stream, epoch)
        for group in self.groups:
            ensure_group(self.redis, self.stream, group)
        return epoch

    def _forget_lost(self, epoch: str) -> int:
        """Events published into an older epoch and never confirmed are gone with that
        Redis: mark them unpublished, to be published again (in order, before newer ones).
        Only a new epoch (or this relay's first round) can leave such events, so an idle
        round does not write."""
        if epoch == self._forgotten_before:
            return 0
        with self.sessions() as session, transaction(session):
            result = session.execute(
                update(OutboxEvent)
                .where(
                    OutboxEvent.confirmed_at.is_(None),
                    OutboxEvent.published_at.is_not(None),
                    OutboxEvent.stream_ref.not_like(f"{epoch}/%"),
                )
                .values(published_at=None, stream_ref=None)
                .execution_options(synchronize_session=False)
            )
        self._forgotten_before = epoch
        if result.rowcount:
            log.warning("outbox relay: re-publishing %d event(s) Redis lost", result.rowcount)
        return result.rowcount

    def _publish(self, epoch: str) -> int:
        with self.sessions() as session:
            rows = session.execute(
                select(
                    OutboxEvent.seq,
                    OutboxEvent.event_id,
                    OutboxEvent.event_type,
                    OutboxEvent.aggregate_id,
                    OutboxEvent.payload,
                    OutboxEvent.created_at,
                )
                .where(OutboxEvent.published_at.is_(None))
                .order_by(OutboxEvent.seq)
                .limit(self.batch_size)
            ).all()
        if not rows:
            return 0
        flat = [str(part) for row in rows for item in entry_fields(row).items() for part in item]
        high_water = format_stream_id(self._known_high_water(epoch))
        entry_ids = self._publish_in_epoch(
            keys=[self.stream, epoch_key(self.stream)],
            args=[epoch, 2 * len(ENTRY_FIELDS), high_water, *flat],
        )
        if entry_ids is None:
            log.warning(
                "outbox relay: the stream left epoch %s; publishing again next round", epoch
            )
            return 0
        if entry_ids == -1:
            self._new_epoch(f"the stream lost entries of epoch {epoch} (it reached {high_water})")
            return 0
        failpoint("outbox.relay.after_publish")
        self._raise_high_water(epoch, max(parse_stream_id(i) for i in entry_ids))
        table = OutboxEvent.__table__
        mark = (
            update(table)
            .where(table.c.seq == bindparam("b_seq"), table.c.published_at.is_(None))
            .values(
                published_at=bindparam("b_at"),
                stream_ref=bindparam("b_ref"),
                attempts=table.c.attempts + 1,
            )
        )
        now = utcnow()
        with self.sessions() as session, transaction(session):
            # Fencing: a relay that lost its lease meanwhile does not mark; the new holder
            # publishes these again (a duplicate the inboxes absorb), keeping the order.
            if not self._renew(session, now):
                log.warning("outbox relay: lease lost; leaving %d event(s) unmarked", len(rows))
                return 0
            session.execute(
                mark,
                [
                    {"b_seq": row.seq, "b_at": now, "b_ref": f"{epoch}/{entry_id}"}
                    for row, entry_id in zip(rows, entry_ids, strict=True)
                ],
            )
        return len(rows)

    def _confirm(self, epoch: str) -> int:
        """Mark confirmed what every group has acknowledged; trim it from the stream. Reads
        first: with nothing in flight, a round asks Redis nothing and writes nothing."""
        with self.sessions() as session:
            rows = session.execute(
                select(OutboxEvent.seq, OutboxEvent.stream_ref)
                .where(OutboxEvent.confirmed_at.is_(None), OutboxEvent.published_at.is_not(None))
                .order_by(OutboxEvent.seq)
                .limit(10 * self.batch_size)
            ).all()
        if not rows:
            return 0
        below = self._acknowledged_below(epoch)
        if below == NOTHING:
            return 0
        done = [
            row.seq
            for row in rows
            if row.stream_ref.startswith(f"{epoch}/")
            and parse_stream_id(row.stream_ref.partition("/")[2]) < below
        ]
        if done:
            with self.sessions() as session, transaction(session):
                session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.seq.in_(done))
                    .values(confirmed_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
        self.redis.xtrim(self.stream, minid=format_stream_id(below), approximate=True)
        return len(done)

    def _acknowledged_below(self, epoch: str) -> StreamId:
        """The first entry id not acknowledged by every group (entries below it are done),
        read in one MULTI with the epoch and the stream's own state. NOTHING when the stream
        is not this epoch's any more, or has gone back in time — then a new epoch starts,
        and every event not confirmed is published again."""
        import redis

        pipe = self.redis.pipeline(transaction=True)
        pipe.get(epoch_key(self.stream))
        pipe.xinfo_stream(self.stream)
        pipe.xinfo_groups(self.stream)
        for group in self.groups:
            pipe.xpending(self.stream, group)
        try:
            current, stream, groups, *pending = pipe.execute(raise_on_error=False)
        except redis.ResponseError:
            return NOTHING
        if current != epoch or isinstance(stream, Exception) or isinstance(groups, Exception):
            return NOTHING
        high_water = self._known_high_water(epoch)
        if parse_stream_id(stream["last-generated-id"]) < high_water:
            self._new_epoch(
                f"the stream went back to {stream['last-generated-id']} "
                f"(epoch {epoch} had reached {format_stream_id(high_water)})"
            )
            return NOTHING
        infos = {info["name"]: info for info in groups}
        bound = EVERYTHING
        for group, summary in zip(self.groups, pending, strict=True):
            info = infos.get(group)
            if info is None or isinstance(summary, Exception):
                return NOTHING
            if summary["pending"]:
                group_bound = parse_stream_id(summary["min"])
            else:
                ms, seq = parse_stream_id(info["last-delivered-id"])
                group_bound = (ms, seq + 1)
            bound = min(bound, group_bound)
        return bound

    def _new_epoch(self, why: str) -> None:
        """Redis lost entries but kept the epoch key: replace the key, so that every event
        not yet confirmed is published again (duplicates are absorbed by the inboxes)."""
        log.error("outbox relay: %s; starting a new epoch", why)
        self.redis.set(epoch_key(self.stream), uuid.uuid4().hex)

    def _raise_high_water(self, epoch: str, entry: StreamId) -> None:
        known = self._known_high_water(epoch)
        self._high_water = (epoch, max(known, entry))

    def _known_high_water(self, epoch: str) -> StreamId:
        """The highest entry id published in this epoch: remembered, or (after a restart of
        the relay) read from the events marked last."""
        if self._high_water is not None and self._high_water[0] == epoch:
            return self._high_water[1]
        with self.sessions() as session:
            refs = session.scalars(
                select(OutboxEvent.stream_ref)
                .where(OutboxEvent.published_at.is_not(None))
                .order_by(OutboxEvent.published_at.desc())
                .limit(self.batch_size)
            ).all()
        ids = [parse_stream_id(r.partition("/")[2]) for r in refs if r.startswith(f"{epoch}/")]
        self._high_water = (epoch, max(ids, default=NOTHING))
        return self._high_water[1]


ENTRY_FIELDS = ("event_id", "type", "aggregate_id", "seq", "created_at", "payload")


def entry_fields(row: Any) -> dict[str, str]:
    return {
        "event_id": row.event_id,
        "type": row.event_type,
        "aggregate_id": row.aggregate_id or "",
        "seq": str(row.seq),
        "created_at": row.created_at.isoformat(),
        "payload": json.dumps(row.payload, separators=(",", ":")),
    }


def ensure_group(redis_client: Any, stream: str, group: str) -> None:
    """Create the consumer group (reading from the start of the stream) unless it exists."""
    import redis

    try:
        redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# --- consumers -----------------------------------------------------------------------


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
        self.handlers = events.handlers_of(module)
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
            event = events.Event(
                event_id=fields["event_id"],
                event_type=fields["type"],
                aggregate_id=fields.get("aggregate_id") or None,
                payload=json.loads(fields["payload"]),
                seq=int(fields.get("seq", 0)),
            )
            handler = self.handlers.get(event.event_type)
            if handler is not None and not self._apply(entry_id, event, handler):
                return False
        failpoint("outbox.consume.after_apply")
        self.redis.xack(self.stream, self.group, entry_id)
        return True

    def _apply(self, entry_id: str, event: events.Event, handler: events.Handler) -> bool:
        """Apply the event and record it in the inbox, in one transaction. A database that
        is away is an outage (raised: the loop backs off and comes back to this entry), not
        a fault of the event; an event that fails `max_attempts` times is set aside in the
        dead letters of this database (durably: its acknowledgement then loses nothing)."""
        try:
            # The handler's rows are flushed at the commit: still as the consumer's module.
            with acting_as(self.module), self.sessions() as session, transaction(session):
                events.apply_once(session, self.module, event, handler)
            self._failures.pop(entry_id, None)
            return True
        except OperationalError:
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            if isinstance(exc, IntegrityError) and self._processed(event.event_id):
                return True  # a racing consumer recorded it first: applied once, by them
            error: Exception = exc
        except Exception as exc:
            error = exc
        failures = self._failures[entry_id] = self._failures.get(entry_id, 0) + 1
        log.error(
            "outbox consumer %s: event %s failed (%d of %d): %s",
            self.name,
            event.event_id,
            failures,
            self.max_attempts,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        if failures < self.max_attempts:
            return False
        with acting_as(self.module), self.sessions() as session, transaction(session):
            events.record_dead_letter(session, self.module, event, repr(error))
        self._failures.pop(entry_id, None)
        log.error(
            "outbox consumer %s: event %s set aside as a dead letter", self.name, event.event_id
        )
        return True

    def _processed(self, event_id: str) -> bool:
        with acting_as(self.module), self.sessions() as session:
            return events.was_processed(session, self.module, event_id)


# --- operator services (`flask outbox status|prune|dead-letters`) -------------------------


@dataclass(frozen=True)
class OutboxStatus:
    unpublished: int
    unconfirmed: int
    oldest_unconfirmed: datetime | None


def outbox_status(session: Session) -> OutboxStatus:
    """How many events wait to be published, how many to be confirmed, and since when."""
    unpublished, unconfirmed, oldest = session.execute(
        select(
            func.count().filter(OutboxEvent.published_at.is_(None)),
            func.count().filter(OutboxEvent.confirmed_at.is_(None)),
            func.min(OutboxEvent.created_at).filter(OutboxEvent.confirmed_at.is_(None)),
        )
    ).one()
    return OutboxStatus(unpublished, unconfirmed, oldest)


def prune_outbox(session: Session, cutoff: datetime, *, relayed: bool) -> int:
    """Delete events confirmed before `cutoff`; when nothing relays the outbox (`relayed`
    false: no module on its own database) every event created before it. In the caller's
    transaction; returns how many were deleted."""
    done = OutboxEvent.confirmed_at < cutoff
    old = done if relayed else or_(done, OutboxEvent.created_at < cutoff)
    return session.execute(delete(OutboxEvent).where(old)).rowcount


@dataclass(frozen=True)
class Retried:
    """A dead letter applied again: `error` is None when it applied (and was removed)."""

    failed_at: datetime
    event_id: str
    event_type: str
    error: Exception | None


def retry_dead_letters(
    session: Session, consumer: str, letters: Sequence[DeadLetter]
) -> Iterator[Retried]:
    """Apply `consumer`'s dead `letters` again, in order, each in its own transaction (one
    that fails does not hold back the others): one that applies is removed, one that fails
    again stays. Yields each outcome as it happens."""
    handlers = events.handlers_of(consumer)
    for letter in letters:
        event = events.Event(
            letter.event_id, letter.event_type, letter.aggregate_id, letter.payload
        )
        failed_at = letter.failed_at
        try:
            with transaction(session):
                events.apply_once(session, consumer, event, handlers[event.event_type])
                events.forget_dead_letter(session, consumer, event.event_id)
        except Exception as exc:
            yield Retried(failed_at, event.event_id, event.event_type, exc)
        else:
            yield Retried(failed_at, event.event_id, event.event_type, None)
