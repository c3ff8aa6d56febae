--[[ ratelimit.lua — a provider's request rate, strict, shared by every worker.

Two parts. The schedule (GCRA, no burst) keeps one number per provider, the theoretical
arrival time (TAT): every call books the slot at TAT and moves TAT one interval on, so
booked slots are one interval apart and a backlog is served in the order it booked. A
slot further ahead than the inline wait is *held* for the request (a string key per
request): the request is parked (worker.gate.parking) and, back for it, goes without
booking again.

The gate ("send", just before the HTTP call) keeps a log of the calls sent in the last
window (a sorted set) and lets a call go only while fewer than `most` were sent in it.
Slots say when a call should go; the log makes sure that calls which went late (a
worker that stalled, a request that came back after its slot) cannot bunch up with the
ones on time: at most `most` calls ever pass in any window, whatever happened before.

KEYS[1] idvcancel:ratelimit:<p>                  string: TAT in ms
KEYS[2] idvcancel:ratelimit:<p>:slot:<request>   string: the slot (ms) held for a request
KEYS[3] idvcancel:ratelimit:<p>:sent             zset: calls sent, score = ms ("send")
ARGV[1] operation: "take" | "reserve" | "send"
"take"     ARGV[2] interval ms (1000 / rate, with the margin), ARGV[3] inline ms,
           ARGV[4] how long a held slot is kept past its time, ms
           → {0, 0}  go now (slot booked)
             {w, 0}  a slot w ms ahead is booked (or was held): sleep w ms, then go
             {w, 1}  a slot w ms ahead is held for this request (KEYS[2]): park
"reserve"  ARGV[2] interval ms, ARGV[3] most slots, ARGV[4] horizon ms: books
           consecutive slots from TAT that begin before now + horizon, for parked
           requests                                  → {first slot (ms, as text), count}
"send"     ARGV[2] window ms, ARGV[3] most calls in it, ARGV[4] the request id
           → 0 sent (logged), else ms until the oldest call leaves the window

Time comes from Redis (TIME) so that every worker agrees on it.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

if op == 'send' then
  local window, most = tonumber(ARGV[2]), tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  if redis.call('ZCARD', KEYS[3]) < most then
    redis.call('ZADD', KEYS[3], now, now .. ':' .. ARGV[4])
    redis.call('PEXPIRE', KEYS[3], math.ceil(window) + 1000)
    return 0
  end
  local oldest = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
  return math.max(1, math.ceil(oldest + window - now) + 1)
end

local interval = tonumber(ARGV[2])
local function tat_now()
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then
    tat = now
  end
  return tat
end
local function book(tat)
  -- kept a second past the last booked slot: an expired TAT reads as "now"
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + 1000))
end

if op == 'reserve' then
  local most, horizon = tonumber(ARGV[3]), tonumber(ARGV[4])
  local tat = tat_now()
  local first, count = tat, 0
  while count < most and tat < now + horizon do
    tat = tat + interval
    count = count + 1
  end
  if count > 0 then
    book(tat)
  end
  return {tostring(first), count}
end

local inline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local held = redis.call('GET', KEYS[2])
if held then
  held = tonumber(held)
  if held - now > inline then
    return {math.ceil(held - now), 1}  -- back early: keep the slot, park again
  end
  redis.call('DEL', KEYS[2])  -- its slot (late or not: the gate keeps the calls apart)
  return {math.max(0, math.ceil(held - now)), 0}
end
local tat = tat_now()
local wait = tat - now
book(tat + interval)
if wait <= inline then
  return {math.ceil(wait), 0}
end
redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil(wait + keep))
return {math.ceil(wait), 1}
