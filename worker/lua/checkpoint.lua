--[[ checkpoint.lua — append one signed checkpoint, compared-and-set on the last one.

Checkpoints form a chain of their own (each names the digest of the one before), so two
runs at once (two beat instances, the CLI beside the periodic task) must never both
append after the same checkpoint. Python builds and signs the checkpoint; this script
only compares the head and appends, in one step.

KEYS[1]  checkpoints stream  idvcancel:checkpoints       (field "checkpoint", JSON)
KEYS[2]  checkpoint head     idvcancel:checkpoints:head  (hash: seq, digest, hash,
                                                          record_id, at)

ARGV[1]  the digest of the checkpoint this one follows ("" = the first checkpoint)
ARGV[2]  the checkpoint (JSON)
ARGV[3]  its digest (hex SHA-256 of its RFC 8785 form, signature included)
ARGV[4]  its seq (the last record it covers)
ARGV[5]  its head (that record's hash)
ARGV[6]  that record's stream id (where the next checkpoint starts reading)
ARGV[7]  when it was written (epoch seconds)

Returns {1, stream id} when appended; {0, digest} when another checkpoint was appended
first (nothing written: start again from it).
]]
local current = redis.call('HGET', KEYS[2], 'digest') or ''
if current ~= ARGV[1] then
  return {0, current}
end
local id = redis.call('XADD', KEYS[1], '*', 'checkpoint', ARGV[2])
redis.call('HSET', KEYS[2], 'seq', ARGV[4], 'digest', ARGV[3], 'hash', ARGV[5],
           'record_id', ARGV[6], 'at', ARGV[7], 'entry_id', id)
return {1, id}
