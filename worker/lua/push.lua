--[[ push.lua — enqueue a chunk of requests and write them to the intake index, atomically.

kombu's Redis transport can lose a message it has popped (BRPOP) but not yet recorded as
un-acked (a worker killed -9, or Redis crashing, between the two round trips). The intake
index remembers every request our producers push until its ledger is done, so that the
reconciler (lua/reconcile.lua) can push again what was lost. The push and the index entry
are one step here: there is no moment at which a message is on the queue and not in the
index (a crash loses both or neither).

Keys (worker/keys.py):
KEYS[1]  the queue          idvcancel                  (list; LPUSH, kombu pops with BRPOP)
KEYS[2]  intake index       idvcancel:intake           (zset request id, score = pushed, s)
KEYS[3]  intake requests    idvcancel:intake:requests  (hash request id -> request JSON)

ARGV[1]  n, the number of requests
ARGV[2 .. 1+n]            the n queue entries (Celery protocol 2, worker/wire.py), in order
ARGV[2+n .. 1+3n]         n pairs: push time (epoch seconds), request id
ARGV[2+3n .. 1+5n]        n pairs: request id, request JSON (validated, worker/producer.py)
The pairs come ready for ZADD and HSET: building them here cost more than the commands.

ZADD NX: a request already in the index keeps its first push time (the reconciler's
clock starts at the first push, and a copy pushed again does not reset it).
Returns the queue length after the push (what LPUSH answers).
]]
local n = tonumber(ARGV[1])
local length = redis.call('LPUSH', KEYS[1], unpack(ARGV, 2, 1 + n))
redis.call('ZADD', KEYS[2], 'NX', unpack(ARGV, 2 + n, 1 + 3 * n))
redis.call('HSET', KEYS[3], unpack(ARGV, 2 + 3 * n, 1 + 5 * n))
return length
