--[[ transition.lua — one atomic step of one request.

All decisions are made in Python; this script only compares and sets, so that the
ledger, the audit chain, the result event and the dead letter change together or not
at all, whatever number of workers write at once.

KEYS[1]  ledger hash      idvcancel:req:<request_id> (or idvcancel:msg:<task_id>)
KEYS[2]  audit stream     idvcancel:audit      (field "record")
KEYS[3]  audit head       idvcancel:audit:head ("<seq>:<hash>", absent = empty chain)
KEYS[4]  results stream   idvcancel:results    (field "event")
KEYS[5]  dead letters     idvcancel:dlq        (hash id -> entry)
KEYS[6]  dead-letter index idvcancel:dlq:index (zset, score = ms)

ARGV[1]  expected ledger version ("0" = no ledger yet)
ARGV[2]  expected audit head     ("" = empty chain)
ARGV[3]  new audit head          (ignored when no records)
ARGV[4]  ledger fields, JSON object of strings ("" = leave the ledger alone)
ARGV[5]  result event JSON ("" = none)
ARGV[6]  dead-letter entry JSON ("" = none)
ARGV[7]  dead-letter id
ARGV[8]  dead-letter score (ms)
ARGV[9]  ledger TTL in seconds ("0" = keep)
ARGV[10] results stream approximate max length ("0" = unbounded)
ARGV[11..] audit records, already hashed, in chain order

Returns {1} when applied, else {0, current version, current head}: the caller re-plans
(version moved) or re-hashes its records on the current head (head moved).
]]
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local head = redis.call('GET', KEYS[3]) or ''
local has_records = #ARGV > 10
if version ~= tonumber(ARGV[1]) or (has_records and head ~= ARGV[2]) then
  return {0, version, head}
end

if ARGV[4] ~= '' then
  local fields = cjson.decode(ARGV[4])
  local flat = {'v', tostring(version + 1)}
  for k, val in pairs(fields) do
    flat[#flat + 1] = k
    flat[#flat + 1] = val
  end
  redis.call('HSET', KEYS[1], unpack(flat))
  local ttl = tonumber(ARGV[9])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
end

for i = 11, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'record', ARGV[i])
end
if has_records then
  redis.call('SET', KEYS[3], ARGV[3])
end

if ARGV[5] ~= '' then
  local maxlen = tonumber(ARGV[10])
  if maxlen > 0 then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'event', ARGV[5])
  else
    redis.call('XADD', KEYS[4], '*', 'event', ARGV[5])
  end
end

if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[7], ARGV[6])
  redis.call('ZADD', KEYS[6], ARGV[8], ARGV[7])
end
return {1}
