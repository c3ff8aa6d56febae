--[[ dlq_delete_if_same.lua — remove a dead letter only if it is still the one a replay read.

A replay reads the entry, resets the request's ledger and sends the request again; an entry
rewritten meanwhile (the request failed again and was dead-lettered anew) must stay.

KEYS[1]  dead letters       idvcancel:dlq        (hash id -> entry JSON)
KEYS[2]  dead-letter index  idvcancel:dlq:index  (zset id, score = ms)
ARGV[1]  the entry id
ARGV[2]  the entry JSON the replay read

Returns 1 when removed, 0 when the entry had changed (kept).
]]
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
