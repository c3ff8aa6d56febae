--[[ confirm_claim.lua — claim the confirmations that are due, atomically.

A confirmation read is due at its score (epoch seconds): IDVCANCEL_CONFIRM_AFTER_SECONDS
after the request ended, and for a OneSpan erasure after its grace period too. Claiming
moves each one's score to the lease's end, so two drains at once (several beat ticks,
several workers) never read the same one, and a drain that dies mid-way leaves its
claims to be claimed again once the lease has run out. The entry is removed only once
its audit record is written (worker/confirm.py), so no confirmation is lost.

Cost: ZRANGEBYSCORE … LIMIT 0 k is O(log n + k), one ZADD and one HGET per entry.

KEYS[1]  confirmations due   idvcancel:confirm:due       (zset request id, score = due, s)
KEYS[2]  what each reads     idvcancel:confirm:requests  (hash request id -> JSON)

ARGV[1]  now (epoch seconds)
ARGV[2]  the lease's end (epoch seconds): the claimed entries' new score
ARGV[3]  the most entries to claim

Returns {id1, json1, id2, json2, ...}; an id without JSON comes with "" (the drain
forgets it).
]]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                       tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
