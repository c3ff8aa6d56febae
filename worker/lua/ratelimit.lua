--[[ ratelimit.lua — a provider's request rate, shared by every worker (GCRA).

The generic cell rate algorithm keeps one number per provider, the theoretical
arrival time (TAT) of the next request: a request may go when now >= TAT - burst.

KEYS[1] idvcancel:ratelimit:<provider>  string: TAT in ms
ARGV[1] emission interval in ms (1000 / rate per second)
ARGV[2] burst tolerance in ms (how far ahead of schedule a burst may run)

Returns 0 when the request may go now (and books its slot), else the ms to wait.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
if now < tat - burst then
  return math.ceil(tat - burst - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now + burst + 1000))
return 0
