--[[ archive_commit.lua — after records were appended and fsynced to the archive files:
record the new archived head and trim exactly the records written, in one step.

KEYS[1]  the archive lock   idvcancel:audit:archive:lock  (string token)
KEYS[2]  the archived head  idvcancel:audit:archived      (hash id, seq, hash, file, at, records)
KEYS[3]  the audit stream   idvcancel:audit
ARGV[1]  this run's token
ARGV[2]  the archived head's id this run started from ("" = none)
ARGV[3]  the new head's stream id     ARGV[4]  its seq     ARGV[5]  its hash
ARGV[6]  the file it went to          ARGV[7]  records added
ARGV[8]  MINID: the first stream id to keep
ARGV[9]  now (ISO 8601)

Returns the number trimmed; -1 when the lock is no longer ours, -2 when the archived
head moved (another run archived meanwhile): nothing changed then.
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local current = redis.call('HGET', KEYS[2], 'id') or ''
if current ~= ARGV[2] then
  return -2
end
redis.call('HSET', KEYS[2], 'id', ARGV[3], 'seq', ARGV[4], 'hash', ARGV[5],
           'file', ARGV[6], 'at', ARGV[9])
redis.call('HINCRBY', KEYS[2], 'records', ARGV[7])
return redis.call('XTRIM', KEYS[3], 'MINID', ARGV[8])
