--[[ release.lua — claim the parked requests of one provider that are due (worker.gate.parking).

Every worker process runs a releaser; this script hands each due entry to exactly one
of them, under a lease: an entry claimed by a releaser that dies before publishing is
claimed again when the lease ends (nothing lost; a second copy is a ledger duplicate).

Due: a timed entry whose time comes within ARGV[5] ms (released together, a few at a
time, rather than each on its own look: it waits the rest in the worker); a claimed entry whose lease ran out; an entry
waiting on the breaker past its retry deadline (released so the pipeline ends it,
failed and dead-lettered); and, when the circuit is open past its open time (or a
probe ran out), one entry picked at random as the probe (one per probe time, however
many releasers run), so that no one request carries every probe of a long outage.

KEYS[1] idvcancel:held:<p>           zset request id -> release time (ms)
KEYS[2] idvcancel:held:<p>:breaker   zset request id -> retry deadline (ms)
KEYS[3] idvcancel:held:<p>:claimed   zset request id -> lease end (ms)
KEYS[4] idvcancel:held:requests      hash request id -> request JSON
KEYS[5] idvcancel:breaker:<p>        the breaker's hash (lua/breaker.lua): read only
KEYS[6] idvcancel:held:<p>:probe     string, PX: a probe was released lately
KEYS[7] idvcancel:held:stats         hash "released:<p>" -> requests published again

ARGV[1] operation: "claim" | "confirm"
"claim"   ARGV[2] most entries, ARGV[3] lease ms, ARGV[4] probe ms, ARGV[5] early ms
          → {ids and JSON, alternating}, breaker state, entries waiting on the breaker,
            ms until the next timed entry or lease end is due (-1: none)}
"confirm" ARGV[2] the stats field ("released:<p>"), ARGV[3 ..] request ids published:
          their claims end, and their JSON goes unless the request was parked again
          meanwhile                                                      → count
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if ARGV[1] == 'confirm' then
  local done = 0
  for i = 3, #ARGV do
    local id = ARGV[i]
    if redis.call('ZREM', KEYS[3], id) == 1 then
      done = done + 1
      if not (redis.call('ZSCORE', KEYS[1], id) or redis.call('ZSCORE', KEYS[2], id)) then
        redis.call('HDEL', KEYS[4], id)
      end
    end
  end
  if done > 0 then
    redis.call('HINCRBY', KEYS[7], ARGV[2], done)
  end
  return done
end

local most, lease, probe_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local function claim(id, from)
  redis.call('ZREM', from, id)
  local request = redis.call('HGET', KEYS[4], id)
  if request then
    redis.call('ZADD', KEYS[3], now + lease, id)
    out[#out + 1] = id
    out[#out + 1] = request
  else
    redis.call('ZREM', KEYS[3], id)  -- nothing to publish: forget it
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, most)) do
  claim(id, KEYS[3])
end
local early = tonumber(ARGV[5])
for _, due in ipairs({{KEYS[1], now + early}, {KEYS[2], now}}) do
  local left = most - #out / 2
  if left > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', due[1], '-inf', due[2], 'LIMIT', 0, left)) do
      claim(id, due[1])
    end
  end
end

local state = redis.call('HGET', KEYS[5], 'state') or 'closed'
local waiting = redis.call('ZCARD', KEYS[2])
if waiting > 0 and state ~= 'closed' then
  local open_until = tonumber(redis.call('HGET', KEYS[5], 'open_until') or '0')
  local probe_until = tonumber(redis.call('HGET', KEYS[5], 'probe_until') or '0')
  local due = (state == 'open' and now >= open_until) or (state == 'half_open' and now >= probe_until)
  if due and redis.call('SET', KEYS[6], '1', 'NX', 'PX', probe_ms) then
    local id = redis.call('ZRANDMEMBER', KEYS[2], 1)[1]  -- with a count: a list everywhere
    if id then
      claim(id, KEYS[2])
      waiting = waiting - 1
    end
  end
end

local next_due = -1
for _, key in ipairs({KEYS[1], KEYS[3]}) do
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then
    local wait = math.max(0, tonumber(head[2]) - now - (key == KEYS[1] and early or 0))
    if next_due < 0 or wait < next_due then
      next_due = wait
    end
  end
end
return {out, state, waiting, math.ceil(next_due)}
