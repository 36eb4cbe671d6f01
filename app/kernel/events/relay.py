"""Phase 3, first half: the outbox relayed to a Redis stream (ADR 0004).

The relay (`flask outbox relay`) holds a lease in the database, so one relay publishes at a
time and events enter the stream in outbox order (`seq`); a second relay waits and takes
over when the holder stops renewing. It XADDs a batch, then marks it published (re-checking
the lease in that transaction). A relay killed between the two re-publishes the batch next
time: delivery is at least once. Each stream entry carries the event's envelope.

Redis keeps nothing on disk. An event counts as delivered only when every consumer group
has acknowledged it (`confirmed_at`), read from the groups' state in one MULTI with the
stream's epoch key. Entries are added only while that key is the relay's epoch and the
stream has not gone back before the highest entry reached (a Lua script). When Redis comes
back empty, or loses entries but keeps the key, a new epoch starts and every event
published in an older one and not confirmed is published again. The consumers' half is
`consumer.py`; see ADR 0004 and docs/phases.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.kernel.db import transaction, utcnow
from app.kernel.events.stream import (
    ENTRY_FIELDS,
    ENVELOPE_COLUMNS,
    EVERYTHING,
    NOTHING,
    PUBLISH_IN_EPOCH,
    StreamId,
    default_name,
    ensure_group,
    entry_fields,
    epoch_key,
    format_stream_id,
    parse_stream_id,
)
from app.kernel.faults import failpoint
from app.kernel.models import EventLease, OutboxEvent
from app.kernel.ownership import KERNEL, acting_as

log = logging.getLogger(__name__)


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
        self._publish_in_epoch = redis_client.register_script(PUBLISH_IN_EPOCH)
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
                select(*ENVELOPE_COLUMNS)
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
