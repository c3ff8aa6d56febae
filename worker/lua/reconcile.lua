--[[ reconcile.lua — claim the intake index entries that must be pushed again, atomically.

The intake index (lua/push.lua) holds every request our producers pushed until its ledger
is done (lua/transition.lua forgets it then). An entry still there long after its push
belongs to a message the broker may have lost (kombu pops with BRPOP and records the
message as un-acked in a second round trip: a worker killed -9, or Redis crashing, in
between loses it). Pushing a request again is always safe: the ledger answers a copy of
a finished request with a `duplicate` record and a copy of one in flight by recovery.

For each entry scored before the cut, oldest first, up to the limit:
  ledger done                           -> forget the entry (a copy pushed after the end)
  no request JSON                       -> forget the entry (nothing to push)
  no ledger                             -> claim: never reached a worker, or lost before
                                           its first step
  calling, lease ended before the cut   -> claim: its worker died and no delivery
  waiting, retry due before the cut        took over (the redelivery or the retry
                                           message is gone too)
  waiting, parked (KEYS[3])             -> leave it: a releaser publishes it when due
                                           (worker.gate.parking), however long it waits
  otherwise (a delivery is at work)     -> leave it, look again after another age
Claimed and left entries get the score ARGV[2] (now): an entry is claimed at most once
per age however many reconcilers run at once (several beat instances, overlapping runs),
since only the script that moves it below the cut sees it.

Cost: ZRANGEBYSCORE … LIMIT 0 k is O(log n + k), one HMGET and one HGET per entry.

Keys (worker/keys.py):
KEYS[1]  intake index     idvcancel:intake           (zset request id, score = pushed, s)
KEYS[2]  intake requests  idvcancel:intake:requests  (hash request id -> request JSON)
KEYS[3]  parked requests  idvcancel:held:requests    (hash request id -> request JSON)
Ledger hashes are ARGV[4] .. <request id> (idvcancel:req:<id>), computed here: fine on
one Redis, not on Redis Cluster.

ARGV[1]  the cut, epoch seconds: entries scored below it are due, and a lease or retry
         time below it is long past
ARGV[2]  now, epoch seconds: the new score of every entry claimed or left
ARGV[3]  most entries to look at in this call
ARGV[4]  ledger prefix  idvcancel:req:

Returns one JSON string {"claimed": a list of claims, "forgotten": n, "left": n}, each
claim a list (id, request JSON, phase ("" = no ledger), ledger version, score before);
an empty list of claims encodes as {}.
]]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'WITHSCORES',
                       'LIMIT', 0, tonumber(ARGV[3]))
local cut = tonumber(ARGV[1])
local claimed, forgotten, left = {}, 0, 0
for i = 1, #due, 2 do
  local id, score = due[i], due[i + 1]
  local ledger = redis.call('HMGET', ARGV[4] .. id, 'phase', 'lease_until', 'not_before', 'v')
  local phase = ledger[1] or ''
  local request = redis.call('HGET', KEYS[2], id)
  if phase == 'done' or not request then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    forgotten = forgotten + 1
  else
    local stuck = phase == ''
        or (phase == 'calling' and tonumber(ledger[2] or '0') < cut)
        or (phase == 'waiting' and tonumber(ledger[3] or '0') < cut
            and redis.call('HEXISTS', KEYS[3], id) == 0)
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
    if stuck then
      claimed[#claimed + 1] = {id, request, phase, tonumber(ledger[4] or '0'), score}
    else
      left = left + 1
    end
  end
end
return cjson.encode({claimed = claimed, forgotten = forgotten, left = left})
