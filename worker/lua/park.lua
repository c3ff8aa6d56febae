--[[ park.lua — park a held request in Redis instead of in the queue (worker.gate.parking).

A request the rate limit or the circuit breaker holds back is acked and parked here; a
releaser (lua/release.lua) publishes it again when it is due. One entry per request id
in either set: a copy of a request already parked adds nothing.

KEYS[1] idvcancel:held:<p>           zset request id -> release time (ms): timed waits
KEYS[2] idvcancel:held:<p>:breaker   zset request id -> retry deadline (ms): waiting for
                                     the circuit to close (oldest deadline first)
KEYS[3] idvcancel:held:<p>:claimed   zset request id -> lease end (ms): being released
KEYS[4] idvcancel:held:requests      hash request id -> request JSON (what is published)

ARGV[1] operation:
"hold"    ARGV[2] request id, ARGV[3] request JSON, ARGV[4] "timed" | "breaker",
          ARGV[5] timed: delay ms from now; breaker: the retry deadline (epoch ms).
          Parks (or moves) the entry.                                      → 1
"defer"   ARGV[2] request id, ARGV[3] request JSON, ARGV[4] delay ms: parks a copy
          whose request is busy elsewhere, unless the request is parked already (a
          future release will bring it)                        → 1 parked, 0 not needed
"promote" ARGV[2] first slot (ms), ARGV[3] interval ms, ARGV[4] count, ARGV[5] lead ms,
          ARGV[6] slot key prefix (idvcancel:ratelimit:<p>:slot:, "" = no rate limit),
          ARGV[7] ms a slot is kept past its time: the circuit closed, so the `count`
          oldest entries waiting on it get consecutive slots (booked by lua/ratelimit.lua
          "reserve") and become timed entries released `lead` ms before their slot
                                                                  → entries moved
Time comes from Redis (TIME).
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

if op == 'promote' then
  local first, interval = tonumber(ARGV[2]), tonumber(ARGV[3])
  local count, lead, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  local keep = tonumber(ARGV[7])
  local ids = redis.call('ZRANGE', KEYS[2], 0, count - 1)
  for i, id in ipairs(ids) do
    local slot = first + (i - 1) * interval
    if prefix ~= '' then
      redis.call('SET', prefix .. id, tostring(slot), 'PX', math.ceil(slot - now + keep))
    end
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], math.max(now, slot - lead), id)
  end
  return #ids
end

local id, request = ARGV[2], ARGV[3]
if op == 'defer' then
  if redis.call('ZSCORE', KEYS[1], id) or redis.call('ZSCORE', KEYS[2], id) then
    return 0
  end
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), id)
  redis.call('HSET', KEYS[4], id, request)
  return 1
end

-- "hold"
redis.call('ZREM', KEYS[3], id)
if ARGV[4] == 'breaker' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), id)
else
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), id)
end
redis.call('HSET', KEYS[4], id, request)
return 1
