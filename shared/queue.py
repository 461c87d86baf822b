"""The Redis stream that carries accepted sales from the API to the worker.

One stream entry holds every sale one API process accepted in one group commit:
fields `n` (how many sales) and `d` (a msgpack array of QueuedSale arrays). The Lua scripts
below keep three things atomic: the idempotency check, the append, and the queue-depth
counter that backpressure reads.
"""

from __future__ import annotations

import dataclasses

import msgspec

GROUP = "writers"


class QueuedSale(msgspec.Struct, array_like=True, frozen=True):
    id: int
    sale_time_us: int  # microseconds since the Unix epoch, UTC
    item_id: int
    store_id: int
    price: int
    quantity: int
    idempotency_key: str | None
    accepted_at_us: int


class QueuedReturn(msgspec.Struct, array_like=True, frozen=True):
    """A return on its way to the worker, with what the API read of its sale."""

    id: int  # from the sales' id blocks
    sale_id: int
    return_time_us: int
    store_id: int  # the store that took it back
    item_id: int  # the sale's
    price: int  # the sale's price snapshot
    quantity: int
    sold: int  # the sale's quantity
    idempotency_key: str | None
    accepted_at_us: int


sale_encoder = msgspec.msgpack.Encoder()
sale_decoder = msgspec.msgpack.Decoder(QueuedSale)
entry_decoder = msgspec.msgpack.Decoder(list[QueuedSale])


@dataclasses.dataclass(frozen=True)
class QueueKeys:
    prefix: str = "sales:"

    @property
    def stream(self) -> str:
        return f"{self.prefix}stream"

    @property
    def depth(self) -> str:
        return f"{self.prefix}depth"

    @property
    def worker_stats(self) -> str:
        return f"{self.prefix}worker-stats"

    def idempotency(self, store_id: int, key: str) -> str:
        return f"{self.prefix}idem:{store_id}:{key}"

    def return_idempotency(self, store_id: int, key: str) -> str:
        return f"{self.prefix}return-idem:{store_id}:{key}"

    def returned(self, sale_id: int) -> str:
        """How much of a sale the accepted returns take back (api.returns)."""
        return f"{self.prefix}returned:{sale_id}"

    @property
    def remembered_patterns(self) -> tuple[str, ...]:
        """Every key that remembers a sale or return (dropped with them by /clear/)."""
        return (f"{self.prefix}idem:*", f"{self.prefix}return-idem:*", f"{self.prefix}returned:*")


# KEYS: stream, depth.  ARGV: max_depth, idempotency_ttl, number of requests, then per
# request: its sale count n, the count k of its sales that carry an idempotency key, k pairs
# (idempotency redis key, encoded sale), and one string holding its other n - k sales
# encoded back to back (so a batch of 1,000 is not 2,000 arguments to pack and parse).
# Answers, per request: 0 when the queue is full (nothing of it stored), else a list with,
# per keyed sale, "" (queued now) or the encoded sale stored earlier under the same key.
ENQUEUE_SCRIPT = """
local depth = tonumber(redis.call('GET', KEYS[2]) or '0')
local max_depth = tonumber(ARGV[1])
local ttl = ARGV[2]
local requests = tonumber(ARGV[3])
local at = 4
local answers = {}
local parts = {}
local count = 0
for r = 1, requests do
    local n, k = tonumber(ARGV[at]), tonumber(ARGV[at + 1]); at = at + 2
    if depth + count >= max_depth then
        answers[r] = 0
        at = at + 2 * k + 1
    else
        local answer = {}
        for s = 1, k do
            local key, sale = ARGV[at], ARGV[at + 1]; at = at + 2
            local earlier = redis.call('GET', key)
            if earlier then
                answer[s] = earlier
            else
                redis.call('SET', key, sale, 'EX', ttl)
                answer[s] = ''
                parts[#parts + 1] = sale
                count = count + 1
            end
        end
        if n > k then
            parts[#parts + 1] = ARGV[at]
            count = count + n - k
        end
        at = at + 1
        answers[r] = answer
    end
end
if count > 0 then
    -- msgpack array32 header, then the sales already encoded by the API
    local blob = struct.pack('>BI4', 0xdd, count) .. table.concat(parts)
    redis.call('XADD', KEYS[1], '*', 'n', count, 'd', blob)
    redis.call('INCRBY', KEYS[2], count)
end
return answers
"""


# Returns are few and checked one request at a time: all of a request's returns are queued
# (one stream entry, field `r`) or none. KEYS: stream, depth. ARGV: max_depth, idempotency_ttl,
# the count k, then per return: its "returned" key, its idempotency key ('' for none), quantity,
# the sale's quantity, what the database holds as returned of it, the encoded return.
# A sale's "returned" key is what the accepted returns take back of it, queued ones included;
# when it is missing (none for a week, or lost with a failover), or behind the database's (a
# return replayed from dead_letter), it starts from the database's. The worker gives back what a
# return that went to dead_letter had taken (RELEASE_RETURNED_SCRIPT).
# Answers: {0} the queue is full; {1, remaining...} a return (1-based index) asks for more than
# is left, with what is left, nothing queued; {2, earlier...} queued: per return "" (queued now)
# or the encoded return accepted earlier under its idempotency key.
RETURNS_SCRIPT = """
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[1]) then
    return {0}
end
local ttl = ARGV[2]
local count = tonumber(ARGV[3])
local returned = {}
local earlier = {}
local refused = {}
for i = 1, count do
    local at = 4 + (i - 1) * 6
    local key, idem, quantity, sold = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    earlier[i] = idem ~= '' and redis.call('GET', idem) or false
    if not earlier[i] then
        if returned[key] == nil then
            returned[key] = math.max(tonumber(redis.call('GET', key) or '0'), tonumber(ARGV[at + 4]))
        end
        if returned[key] + quantity > sold then
            refused[#refused + 1] = i
            refused[#refused + 1] = sold - returned[key]
        else
            returned[key] = returned[key] + quantity
        end
    end
end
if #refused > 0 then
    return {1, unpack(refused)}
end
local answers = {2}
local parts = {}
for i = 1, count do
    local at = 4 + (i - 1) * 6
    if earlier[i] then
        answers[#answers + 1] = earlier[i]
    else
        answers[#answers + 1] = ''
        parts[#parts + 1] = ARGV[at + 5]
        if ARGV[at + 1] ~= '' then
            redis.call('SET', ARGV[at + 1], ARGV[at + 5], 'EX', ttl)
        end
    end
end
for key, value in pairs(returned) do
    redis.call('SET', key, value, 'EX', ttl)
end
if #parts > 0 then
    local blob = struct.pack('>BI4', 0xdd, #parts) .. table.concat(parts)
    redis.call('XADD', KEYS[1], '*', 'n', #parts, 'r', blob)
    redis.call('INCRBY', KEYS[2], #parts)
end
return answers
"""


# KEYS: QueueKeys.returned of sales whose returns went to dead_letter; ARGV: the quantities.
# Gives back what those returns had reserved (a key gone meanwhile is not made up again).
RELEASE_RETURNED_SCRIPT = """
for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        redis.call('DECRBY', KEYS[i], ARGV[i])
    end
end
return #KEYS
"""


def encoded_back_to_back(sales: list[QueuedSale]) -> bytes:
    """The sales' msgpack encodings concatenated: the encoded list without its array header."""
    count = len(sales)
    header = 1 if count < 16 else 3 if count < 65_536 else 5
    return sale_encoder.encode(sales)[header:]


# KEYS: stream, depth.  ARGV: group, then (entry id, sale count) pairs. Only an entry this
# call really removed leaves the depth counter, so a redelivered or purged entry counts once.
ACK_SCRIPT = """
local done = 0
for i = 2, #ARGV, 2 do
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
        redis.call('DECRBY', KEYS[2], ARGV[i + 1])
        done = done + 1
    end
end
return done
"""

# KEYS: stream, depth. Drops every queued sale (for /clear/ and /create/).
PURGE_SCRIPT = """
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
redis.call('SET', KEYS[2], 0)
return 1
"""


async def purge(client, keys: QueueKeys) -> None:
    """Forget queued sales and remembered idempotency keys: the data they refer to is gone."""
    await client.eval(PURGE_SCRIPT, 2, keys.stream, keys.depth)
    for pattern in keys.remembered_patterns:
        batch = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)


def entry_age_ms(entry_id: bytes | str, now_ms: int) -> int:
    """Stream ids start with the append time in milliseconds."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return max(0, now_ms - int(entry_id.split("-", 1)[0]))
