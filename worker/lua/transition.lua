--[[ transition.lua — a batch of steps, each of one request, applied atomically in order.

All decisions are made in Python; this script only compares and sets, so that a
request's ledger, its audit records, its result event and its dead letter change
together or not at all, whatever number of workers write at once; so does the
confirmation read a cancel or deletion that ends well is due for (``worker.delivery.confirm``). The worker process
sends every step its threads have ready in one call (group commit).

KEYS[1]  audit stream      idvcancel:audit      (field "record")
KEYS[2]  audit head        idvcancel:audit:head ("<seq>:<hash>", absent = empty chain)
KEYS[3]  results stream    idvcancel:results    (field "event")
KEYS[4]  dead letters      idvcancel:dlq        (hash id -> entry)
KEYS[5]  dead-letter index idvcancel:dlq:index  (zset, score = ms)
KEYS[6]  intake index      idvcancel:intake     (zset request id -> pushed, s)
KEYS[7]  intake requests   idvcancel:intake:requests (hash request id -> request JSON)
KEYS[8]  confirmations     idvcancel:confirm:requests (hash request id -> entry JSON)
KEYS[9]  confirmations due idvcancel:confirm:due (zset request id -> due, s)
KEYS[9+i] the ledger hash of item i (idvcancel:req:<id> or idvcancel:msg:<task id>)

ARGV[1]  expected audit head before the first item ("" = empty chain)
ARGV[2]  results stream approximate max length ("0" = unbounded)
ARGV[3]  now in ms (dead-letter score)
ARGV[4]  number of items
then per item, 11 fixed values and its records:
  expected ledger version ("0" = none yet), ledger fields as a JSON object of strings
  ("" = leave the ledger), result event JSON (""), dead-letter entry JSON (""),
  dead-letter id, ledger TTL seconds ("0" = never expire), the request id to forget
  from the intake index ("" = none; Python sets it when the ledger becomes done, so the
  index only holds requests in flight), the confirmation entry JSON ("" = none; it is
  stored under the request id to forget), its due time (ZADD NX: a confirmation already
  due keeps its time), number of records n, the audit head after this
  item, then n audit records (sealed, in chain order)

Returns {1} when every item applied; {0, head} when the head had moved (nothing
applied: re-seal on it); {2, i, version, head} when item i's ledger had moved: items
before i applied, i and after did not.
]]
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then
  return {0, head}
end
local maxlen = tonumber(ARGV[2])
local a = 5
for i = 1, tonumber(ARGV[4]) do
  local ledger_key = KEYS[9 + i]
  local version = tonumber(redis.call('HGET', ledger_key, 'v') or '0')
  if version ~= tonumber(ARGV[a]) then
    return {2, i, version, head}
  end
  if ARGV[a + 1] ~= '' then
    local flat = {'v', tostring(version + 1)}
    for k, val in pairs(cjson.decode(ARGV[a + 1])) do
      flat[#flat + 1] = k
      flat[#flat + 1] = val
    end
    redis.call('HSET', ledger_key, unpack(flat))
    local ttl = tonumber(ARGV[a + 5])
    if ttl > 0 then
      redis.call('EXPIRE', ledger_key, ttl)
    else
      -- in flight again (a replay): a TTL left from when it was done must not run on
      redis.call('PERSIST', ledger_key)
    end
  end
  if ARGV[a + 6] ~= '' then
    redis.call('ZREM', KEYS[6], ARGV[a + 6])
    redis.call('HDEL', KEYS[7], ARGV[a + 6])
  end
  if ARGV[a + 7] ~= '' then
    redis.call('HSET', KEYS[8], ARGV[a + 6], ARGV[a + 7])
    redis.call('ZADD', KEYS[9], 'NX', ARGV[a + 8], ARGV[a + 6])
  end
  local n = tonumber(ARGV[a + 9])
  for r = 1, n do
    redis.call('XADD', KEYS[1], '*', 'record', ARGV[a + 10 + r])
  end
  if n > 0 then
    head = ARGV[a + 10]
    redis.call('SET', KEYS[2], head)
  end
  if ARGV[a + 2] ~= '' then
    if maxlen > 0 then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'event', ARGV[a + 2])
    else
      redis.call('XADD', KEYS[3], '*', 'event', ARGV[a + 2])
    end
  end
  if ARGV[a + 3] ~= '' then
    redis.call('HSET', KEYS[4], ARGV[a + 4], ARGV[a + 3])
    redis.call('ZADD', KEYS[5], ARGV[3], ARGV[a + 4])
  end
  a = a + 11 + n
end
return {1}
