"""The Lua scripts of a :class:`~replipoll.redis.RedisBatch`, and its constants.

Every step of a batch that must not be half done is one of these scripts
(see :mod:`replipoll.redis._batch` for the keys they work on).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHUNK",
    "FINISH",
    "GROUP",
    "HAND_BACK_MS",
    "LOAD",
    "MINE",
    "READ_COUNT",
    "STATUS",
    "SWEEP",
]

#: The consumer group every worker of a batch joins.
GROUP: Final = "workers"
#: Ids per load script call, and finished ids per finish script call.
CHUNK: Final = 1000
#: The idle time (ms) that hands an entry back: past any worker's reclaim_after.
HAND_BACK_MS: Final = 365 * 86_400_000
#: Ids read per ``XREADGROUP``, at most.
READ_COUNT: Final = 100

# Every one reads Redis's clock as ms with this line.
_NOW: Final = (
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
)

# KEYS: ids, queue, loaders, meta. ARGV: loader, lease (ms), 'begin' | 'end' |
# 'add', then the ids. Returns how many ids were new.
LOAD: Final = (
    _NOW
    + """
local op = ARGV[3]
if op == 'end' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'loads_finished', 1)
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
if op == 'begin' then
  redis.call('HINCRBY', KEYS[4], 'loads_started', 1)
  return 0
end
local added = 0
for i = 4, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[i])
    added = added + 1
  end
end
return added
"""
)

# KEYS: queue, done, results, outcomes, ids, loaders. ARGV: group, worker, then
# (entry, id, result, record) for each finished id. Returns a 1 (written) or
# 0 (done already) per id, then done, total and live loaders.
FINISH: Final = (
    _NOW
    + """
local reply = {}
for i = 3, #ARGV, 4 do
  local entry, id, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SADD', KEYS[2], id) == 1 then
    redis.call('XADD', KEYS[3], '*', 'id', id, 'result', result,
      'worker', ARGV[2], 'record', ARGV[i + 3])
    redis.call('HINCRBY', KEYS[4], result, 1)
    reply[#reply + 1] = 1
  else
    reply[#reply + 1] = 0
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
end
reply[#reply + 1] = redis.call('SCARD', KEYS[2])
reply[#reply + 1] = redis.call('SCARD', KEYS[5])
reply[#reply + 1] = redis.call('ZCOUNT', KEYS[6], now, '+inf')
return reply
"""
)

# KEYS: queue. ARGV: group, worker, and the idle time (ms) to set: 0 to keep
# this worker's pending entries (a heartbeat), more to hand them back. With
# nothing pending, a worker handing back deletes itself from the group.
# Returns the entries concerned.
MINE: Final = """
local entries = {}
local start = '-'
while true do
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', 1000, ARGV[2])
  if #page == 0 then break end
  local ids = {}
  for _, item in ipairs(page) do
    ids[#ids + 1] = item[1]
    entries[#entries + 1] = item[1]
  end
  if ARGV[3] ~= '0' then
    ids[#ids + 1] = 'IDLE'
    ids[#ids + 1] = ARGV[3]
  end
  ids[#ids + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end
if #entries == 0 and ARGV[3] ~= '0' then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return entries
"""

# KEYS: queue. ARGV: group, this worker, silence (ms). Deletes the consumers
# (not this one) with nothing pending, silent that long; returns how many.
SWEEP: Final = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

# KEYS: ids, done, queue, outcomes, loaders, meta. ARGV: group. Returns total,
# done, live loaders, loads started, loads finished, pending, consumers, then
# the outcomes as name, count pairs.
STATUS: Final = (
    _NOW
    + """
local meta = redis.call('HMGET', KEYS[6], 'loads_started', 'loads_finished')
local pending, consumers = 0, 0
if redis.call('EXISTS', KEYS[3]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[3])) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    if info['name'] == ARGV[1] then
      pending, consumers = info['pending'], info['consumers']
    end
  end
end
local reply = {
  redis.call('SCARD', KEYS[1]), redis.call('SCARD', KEYS[2]),
  redis.call('ZCOUNT', KEYS[5], now, '+inf'),
  tonumber(meta[1]) or 0, tonumber(meta[2]) or 0, pending, consumers,
}
for _, value in ipairs(redis.call('HGETALL', KEYS[4])) do
  reply[#reply + 1] = value
end
return reply
"""
)
