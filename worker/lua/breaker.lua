--[[ breaker.lua — one provider's circuit breaker, shared by every worker.

KEYS[1] idvcancel:breaker:<provider>  hash: state (closed|open|half_open), failures,
        open_until (ms), probe_until (ms)
ARGV[1] operation: "allow" | "success" | "failure"
ARGV[2] failure threshold (consecutive transient failures that open the circuit)
ARGV[3] open time in ms (how long it stays open before letting one probe through)
ARGV[4] probe time in ms (how long one probe may take before another is let through)

Time comes from Redis (TIME) so that every worker agrees on it.
"allow"   → {1, state}            the call may go (closed, or this caller is the probe)
            {0, state, wait_ms}   held back: try again in wait_ms
"success" → {1, "closed"}
"failure" → {1, state}
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local open_ms = tonumber(ARGV[3])
local probe_ms = tonumber(ARGV[4])
local state = redis.call('HGET', key, 'state') or 'closed'

if op == 'allow' then
  if state == 'closed' then
    return {1, state}
  end
  local open_until = tonumber(redis.call('HGET', key, 'open_until') or '0')
  if state == 'open' and now < open_until then
    return {0, state, open_until - now}
  end
  local probe_until = tonumber(redis.call('HGET', key, 'probe_until') or '0')
  if now < probe_until then
    return {0, 'half_open', probe_until - now}
  end
  redis.call('HSET', key, 'state', 'half_open', 'probe_until', now + probe_ms)
  return {1, 'half_open'}
elseif op == 'success' then
  if state ~= 'closed' or redis.call('HGET', key, 'failures') ~= '0' then
    redis.call('HSET', key, 'state', 'closed', 'failures', 0, 'open_until', 0, 'probe_until', 0)
  end
  return {1, 'closed'}
else
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  if state == 'half_open' or failures >= threshold then
    redis.call('HSET', key, 'state', 'open', 'open_until', now + open_ms, 'probe_until', 0)
    return {1, 'open'}
  end
  return {1, state}
end
