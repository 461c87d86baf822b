"""The Redis streams that carry accepted sales from the API to the workers.

The queue is QUEUE_PARTITIONS streams (QueueKeys): a store's sales and returns always go to
the same one, and each is consumed by one worker at a time (worker.leases). One stream entry
holds the sales of one partition that one API process accepted in one group commit: fields
`n` (how many sales) and `d` (a msgpack array of QueuedSale arrays). The Lua scripts below keep
three things atomic: the idempotency check, the append, and the per-partition depth counters
that backpressure reads.
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
    price: int  # what the till charged (the list price when it did not say)
    quantity: int
    idempotency_key: str | None
    accepted_at_us: int
    # The catalogue's price at sale_time. Optional (a release before it queued eight fields):
    # without it the price is the list price (decode_sale_rows).
    list_price: int | None = None
    # A till's sale: its till (pos key id) and sequence number (docs/guarantees.md).
    till_id: int | None = None
    till_seq: int | None = None
    # What the till stamped, when it was ahead of the server's clock (sale_time is then the
    # moment the API accepted it).
    till_time_us: int | None = None


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

# The worker reads an entry's sales as plain tuples, the fastest form msgspec decodes to:
# (id, sale_time_us, item_id, store_id, price, quantity, idempotency_key, accepted_at_us,
# list_price, till_id, till_seq, till_time_us).
_rows_decoder = msgspec.msgpack.Decoder(
    list[tuple[int, int, int, int, int, int, str | None, int, int | None, int | None, int | None, int | None]]
)


def decode_sale_rows(data: bytes) -> list[tuple]:
    """An entry's sales as tuples. A sale queued by an earlier release lacks the newer fields
    (decoded with their defaults); one queued without a list price was charged its list price:
    its price is its list price."""
    try:
        rows = _rows_decoder.decode(data)
    except msgspec.ValidationError:
        rows = [tuple(sale) for sale in map(msgspec.structs.astuple, entry_decoder.decode(data))]
    if any(row[8] is None for row in rows):
        return [row if row[8] is not None else (*row[:8], row[4], *row[9:]) for row in rows]
    return rows


ROW_WIDTH = 12  # the columns of decode_sale_rows's tuples


def full_rows(rows: list[tuple]) -> list[tuple]:
    """Rows as wide as decode_sale_rows's: a row made by hand with only the first nine (a sale
    of no till, by tests, benchmarks and tools) gets the till columns as NULL."""
    if rows and len(rows[0]) < ROW_WIDTH:
        return [(*row, *(None,) * (ROW_WIDTH - len(row))) for row in rows]
    return rows


@dataclasses.dataclass(frozen=True)
class Partition:
    """One stream of the queue and the counter of the sales waiting in it."""

    index: int | None  # None: the single stream of releases before partitions (only drained)
    stream: str
    depth: str


@dataclasses.dataclass(frozen=True)
class QueueKeys:
    """The queue's Redis keys. The queue is `partitions` streams (QUEUE_PARTITIONS, fixed for a
    deployment): a store's sales and returns always go to partition `store_id mod partitions`,
    and each partition is consumed by one worker at a time (worker.leases), so the store-keyed
    rollup rows of a partition are only ever written by its holder. Each partition's keys share
    the hash tag `{pN}`, so that on a Redis Cluster a partition lives in one slot."""

    prefix: str = "sales:"
    partitions: int = 16

    def partition_of(self, store_id: int) -> int:
        return store_id % self.partitions

    def partition(self, index: int) -> Partition:
        tag = f"{self.prefix}{{p{index}}}:"
        return Partition(index, f"{tag}stream", f"{tag}depth")

    @property
    def all_partitions(self) -> list[Partition]:
        return [self.partition(index) for index in range(self.partitions)]

    @property
    def unpartitioned(self) -> Partition:
        """The stream of a release before partitions: drained after an upgrade, never written."""
        return Partition(None, f"{self.prefix}stream", f"{self.prefix}depth")

    def lease(self, index: int) -> str:
        """Who consumes partition `index` (worker.leases)."""
        return f"{self.prefix}{{p{index}}}:lease"

    @property
    def writers(self) -> str:
        """The live workers, each scored with the moment its membership lapses (worker.leases)."""
        return f"{self.prefix}writers"

    @property
    def worker_stats(self) -> str:
        return f"{self.prefix}worker-stats"

    def idempotency(self, store_id: int, key: str) -> str:
        return f"{self.prefix}idem:{store_id}:{key}"

    def till(self, store_id: int, till_id: int) -> str:
        """A till's highest sequence number and window of latest sales (ENQUEUE_SCRIPT), in the
        partition of its store (a till sells for one store)."""
        return f"{self.prefix}{{p{self.partition_of(store_id)}}}:till:{till_id}"

    def return_idempotency(self, store_id: int, key: str) -> str:
        return f"{self.prefix}return-idem:{store_id}:{key}"

    def returned(self, sale_id: int) -> str:
        """How much of a sale the accepted returns take back (api.returns)."""
        return f"{self.prefix}returned:{sale_id}"

    @property
    def remembered_patterns(self) -> tuple[str, ...]:
        """Every key that remembers a sale or return (dropped with them by /clear/)."""
        return (
            f"{self.prefix}idem:*",
            f"{self.prefix}return-idem:*",
            f"{self.prefix}returned:*",
            f"{self.prefix}{{p*}}:till:*",
        )

    def max_depth_per_partition(self, max_depth: int) -> int:
        """QUEUE_MAX_DEPTH spread over the partitions: a partition whose worker fell behind (or
        died, until its lease moves) refuses its own stores' sales, not everyone's."""
        return max(1, -(-max_depth // self.partitions))


# A till's sales answered again from Redis: how many of its latest numbers it keeps (docs/
# guarantees.md). A till resends at most the batch whose answer it lost (up to 1,000 sales).
# Fixed: a number's slot in the window is its remainder by this.
TILL_WINDOW = 1_000


# KEYS: the stream and depth counter of each partition the flush touches (2m keys). ARGV:
# max_depth (per partition), idempotency_ttl, number of requests, then per request: how many
# partitions it touches, and per partition: its place s (1..m) among the KEYS, its sale count
# n, the count k of its sales that are remembered, k quintuples (its Redis key; for a till's
# sale its number, the number's slot in the till's window and the sale's mark, else three '';
# the encoded sale), and one string holding its other n - k sales encoded back to back (so a
# batch of 1,000 is not 2,000 arguments to pack and parse).
# A sale with an idempotency key is remembered under that key for the ttl. A till's sale
# (QueueKeys.till: one hash per till, renewed for the ttl by each request) is new when its
# number is above the till's highest (`hw`), and is then kept in its slot of the window as
# "<number>:<mark>:<sale>"; a number at or below it is a retry, answered from its slot when the
# slot holds that number with the same mark (what the sale is: sales_mark), refused when it
# holds it with another (two tills on one key, an old copy of a spool), and refused as already
# stored when the window no longer holds it.
# Answers, per request: 0 when one of its partitions is full; {'?', i, hw, ...} when its i-th
# remembered sale (in the order given) is a till's number taken by another sale; {'!', i, hw,
# ...} when it is a till's, already stored and out of the window (hw: the till's highest; in
# these three cases nothing of it is stored: a request is queued whole or not at all); else a
# list with, per remembered sale in the order given, "" (queued now) or the encoded sale stored
# earlier under the same key or number; then one more: the places of the partitions found full.
# Each partition touched gets one stream entry.
ENQUEUE_SCRIPT = """
local max_depth = tonumber(ARGV[1])
local ttl = ARGV[2]
local requests = tonumber(ARGV[3])
local depth, count, parts = {}, {}, {}
for s = 1, #KEYS / 2 do
    depth[s] = tonumber(redis.call('GET', KEYS[2 * s]) or '0')
    count[s] = 0
    parts[s] = {}
end
local highest, touched_tills = {}, {}
local function hw(till)
    if highest[till] == nil then
        highest[till] = tonumber(redis.call('HGET', till, 'hw') or '0')
    end
    return highest[till]
end
-- what the window holds of a till's number: the sale and its mark, or nothing
local function in_window(till, seq, slot)
    local kept = redis.call('HGET', till, slot)
    if not kept or string.sub(kept, 1, #seq + 1) ~= seq .. ':' then
        return false, false
    end
    local rest = string.sub(kept, #seq + 2)
    local colon = string.find(rest, ':', 1, true)
    return string.sub(rest, colon + 1), string.sub(rest, 1, colon - 1)
end
local at = 4
local answers = {}
local full_places = {}
for r = 1, requests do
    local touched = tonumber(ARGV[at]); at = at + 1
    local full = false
    local stale, taken = {'!'}, {'?'}
    local skip = at
    local remembered = 0
    for _ = 1, touched do
        local s, k = tonumber(ARGV[skip]), tonumber(ARGV[skip + 2])
        if depth[s] + count[s] >= max_depth then
            full = true
            full_places[#full_places + 1] = s
        end
        for i = 1, k do
            local e = skip + 3 + 5 * (i - 1)
            local seq = ARGV[e + 1]
            if seq ~= '' and tonumber(seq) <= hw(ARGV[e]) then
                local sale, mark = in_window(ARGV[e], seq, ARGV[e + 2])
                local problem = (not sale and stale) or (mark ~= ARGV[e + 3] and taken) or nil
                if problem then
                    problem[#problem + 1] = remembered + i
                    problem[#problem + 1] = hw(ARGV[e])
                end
            end
        end
        remembered = remembered + k
        skip = skip + 3 + 5 * k + 1
    end
    if full then
        answers[r] = 0
        at = skip
    elseif #taken > 1 then
        answers[r] = taken
        at = skip
    elseif #stale > 1 then
        answers[r] = stale
        at = skip
    else
        local answer = {}
        for _ = 1, touched do
            local s, n, k = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]); at = at + 3
            for _ = 1, k do
                local key, seq, slot, mark, sale = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
                at = at + 5
                local earlier
                if seq == '' then
                    earlier = redis.call('GET', key)
                elseif tonumber(seq) <= hw(key) then
                    earlier = in_window(key, seq, slot)
                end
                if earlier then
                    answer[#answer + 1] = earlier
                else
                    if seq == '' then
                        redis.call('SET', key, sale, 'EX', ttl)
                    else
                        redis.call('HSET', key, slot, seq .. ':' .. mark .. ':' .. sale)
                        if tonumber(seq) > hw(key) then  -- always, with numbers ascending (checked by the API)
                            redis.call('HSET', key, 'hw', seq)
                            highest[key] = tonumber(seq)
                        end
                        touched_tills[key] = true
                    end
                    answer[#answer + 1] = ''
                    parts[s][#parts[s] + 1] = sale
                    count[s] = count[s] + 1
                end
            end
            if n > k then
                parts[s][#parts[s] + 1] = ARGV[at]
                count[s] = count[s] + n - k
            end
            at = at + 1
        end
        answers[r] = answer
    end
end
for till in pairs(touched_tills) do
    redis.call('EXPIRE', till, ttl)
end
for s = 1, #KEYS / 2 do
    if count[s] > 0 then
        -- msgpack array32 header, then the sales already encoded by the API
        local blob = struct.pack('>BI4', 0xdd, count[s]) .. table.concat(parts[s])
        redis.call('XADD', KEYS[2 * s - 1], '*', 'n', count[s], 'd', blob)
        redis.call('INCRBY', KEYS[2 * s], count[s])
    end
end
answers[requests + 1] = full_places
return answers
"""


# Returns are few and checked one request at a time: all of a request's returns are queued
# (one stream entry, field `r`, per partition they touch) or none. KEYS: the stream and depth
# counter of each partition the returns go to (2m keys; a return goes to the partition of the
# store that takes it back). ARGV: max_depth (per partition), idempotency_ttl, the count k,
# then per return: its "returned" key, its idempotency key ('' for none), quantity, the sale's
# quantity, what the database holds as returned of it, the encoded return, its partition's
# place s (1..m) among the KEYS.
# A sale's "returned" key is what the accepted returns take back of it, queued ones included;
# when it is missing (none for a week, or lost with a failover), or behind the database's (a
# return replayed from dead_letter), it starts from the database's. The worker gives back what a
# return that went to dead_letter had taken (RELEASE_RETURNED_SCRIPT).
# Answers: {0} the queue is full; {1, remaining...} a return (1-based index) asks for more than
# is left, with what is left, nothing queued; {2, earlier...} queued: per return "" (queued now)
# or the encoded return accepted earlier under its idempotency key.
RETURNS_SCRIPT = """
for s = 1, #KEYS / 2 do
    if tonumber(redis.call('GET', KEYS[2 * s]) or '0') >= tonumber(ARGV[1]) then
        return {0}
    end
end
local ttl = ARGV[2]
local count = tonumber(ARGV[3])
local returned = {}
local earlier = {}
local refused = {}
for i = 1, count do
    local at = 4 + (i - 1) * 7
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
    local at = 4 + (i - 1) * 7
    if earlier[i] then
        answers[#answers + 1] = earlier[i]
    else
        answers[#answers + 1] = ''
        local s = tonumber(ARGV[at + 6])
        parts[s] = parts[s] or {}
        parts[s][#parts[s] + 1] = ARGV[at + 5]
        if ARGV[at + 1] ~= '' then
            redis.call('SET', ARGV[at + 1], ARGV[at + 5], 'EX', ttl)
        end
    end
end
for key, value in pairs(returned) do
    redis.call('SET', key, value, 'EX', ttl)
end
for s, queued in pairs(parts) do
    local blob = struct.pack('>BI4', 0xdd, #queued) .. table.concat(queued)
    redis.call('XADD', KEYS[2 * s - 1], '*', 'n', #queued, 'r', blob)
    redis.call('INCRBY', KEYS[2 * s], #queued)
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


# KEYS: one partition's stream, depth.  ARGV: group, then (entry id, sale count) pairs. Only an entry this
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

# KEYS: stream, depth of one partition. Drops its queued sales (for /clear/ and /create/).
PURGE_SCRIPT = """
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
redis.call('SET', KEYS[2], 0)
return 1
"""


def every_stream(keys: QueueKeys) -> list[Partition]:
    """The partitions, and the stream of a release before them (drained after an upgrade)."""
    return [*keys.all_partitions, keys.unpartitioned]


def script_keys(partitions: list[Partition]) -> list[str]:
    """KEYS of the enqueue scripts: each partition's stream, then its depth counter."""
    return [key for partition in partitions for key in (partition.stream, partition.depth)]


async def purge(client, keys: QueueKeys) -> None:
    """Forget queued sales and remembered idempotency keys: the data they refer to is gone."""
    async with client.pipeline(transaction=False) as pipe:
        for partition in every_stream(keys):
            pipe.eval(PURGE_SCRIPT, 2, partition.stream, partition.depth)
        await pipe.execute()
    for pattern in keys.remembered_patterns:
        batch = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)


async def depth_and_oldest(client, keys: QueueKeys, *, with_time: bool = False) -> tuple:
    """(sales waiting in every partition, the id of the oldest entry of any partition or None),
    preceded by Redis's TIME with `with_time`; one round trip."""
    streams = every_stream(keys)
    async with client.pipeline(transaction=False) as pipe:
        if with_time:
            pipe.time()
        for partition in streams:
            pipe.get(partition.depth)
            pipe.xrange(partition.stream, count=1)
        replies = await pipe.execute()
    clock = [replies.pop(0)] if with_time else []
    depth = sum(int(reply or 0) for reply in replies[::2])
    firsts = [entries[0][0] for entries in replies[1::2] if entries]
    oldest = min(firsts, key=entry_ms) if firsts else None
    return (*clock, depth, oldest)


def entry_ms(entry_id: bytes | str) -> int:
    """Stream ids start with the append time in milliseconds."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(entry_id.split("-", 1)[0])


def entry_age_ms(entry_id: bytes | str, now_ms: int) -> int:
    return max(0, now_ms - entry_ms(entry_id))
