"""The Redis stream the outbox is relayed to: entry ids, the epoch, the entries' fields.

Shared by the relay (which adds entries) and the consumers (which read them back as
envelopes).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from app.kernel.events.envelope import Envelope
from app.kernel.events.outbox import envelope_of
from app.kernel.models import OutboxEvent

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
PUBLISH_IN_EPOCH = """
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


# What the relay reads of an outbox row: the envelope's columns.
ENVELOPE_COLUMNS = (
    OutboxEvent.seq,
    OutboxEvent.event_id,
    OutboxEvent.event_type,
    OutboxEvent.event_version,
    OutboxEvent.aggregate_type,
    OutboxEvent.aggregate_id,
    OutboxEvent.aggregate_version,
    OutboxEvent.payload,
    OutboxEvent.created_at,
)

# A stream entry: the envelope (JSON), with its id, type, aggregate id and outbox seq
# alongside for operators reading the stream (XRANGE).
ENTRY_FIELDS = ("event_id", "type", "aggregate_id", "seq", "envelope")


def entry_fields(row: Any) -> dict[str, str]:
    return {
        "event_id": row.event_id,
        "type": row.event_type,
        "aggregate_id": row.aggregate_id or "",
        "seq": str(row.seq),
        "envelope": envelope_of(row).to_json(),
    }


def envelope_of_entry(fields: dict[str, str]) -> Envelope:
    """The envelope a stream entry carries. An entry a relay of the previous release put
    on the stream (still pending across the upgrade) has the bare payload and the outbox's
    creation time instead: wrapped into an envelope of version 1."""
    seq = int(fields.get("seq", 0))
    if "envelope" in fields:
        return Envelope.from_json(fields["envelope"], seq=seq)
    aggregate_id = fields.get("aggregate_id") or None
    return Envelope.from_dict(
        {
            "id": fields["event_id"],
            "type": fields["type"],
            "version": 1,
            "occurred_at": fields["created_at"],
            "aggregate": {"type": "", "id": aggregate_id} if aggregate_id else None,
            "payload": json.loads(fields["payload"]),
        },
        seq=seq,
    )


def ensure_group(redis_client: Any, stream: str, group: str) -> None:
    """Create the consumer group (reading from the start of the stream) unless it exists."""
    import redis

    try:
        redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
