--[[ intake_trim.lua — retention of the intake index: forget entries that no longer matter.

The journal forgets an entry when its ledger becomes done (lua/transition.lua), and the
reconciler forgets due entries whose ledger is done (lua/reconcile.lua). What can still
stay behind, and is forgotten here (worker/retention.py, task idvcancel.retention):

  ledger done                        a copy pushed after the request ended (a duplicate,
                                     a reused id), not yet due for the reconciler
  no ledger, scored below ARGV[2]    pushed longer ago than a finished ledger lives: a
                                     copy pushed now could find its ledger expired and be
                                     carried out again, so it must never be pushed again
  JSON but no index member           an orphan (a foreign producer that wrote the hash
                                     outside MULTI); nothing would ever read it
  index member but no JSON           nothing to push (the reconciler drops it too)

Checked and removed in one script per page, so a request pushed again meanwhile (a
dead-letter replay resets its ledger before it pushes) is never forgotten by mistake.

Keys (worker/keys.py):
KEYS[1]  intake index     idvcancel:intake           (zset request id, score = pushed, s)
KEYS[2]  intake requests  idvcancel:intake:requests  (hash request id -> request JSON)
Ledger hashes are ARGV[1] .. <request id> (idvcancel:req:<id>): one Redis, not Cluster.

ARGV[1]  ledger prefix  idvcancel:req:
ARGV[2]  expiry bound, epoch seconds ("" = none: ledgers are kept forever)
ARGV[3 ..] the request ids to look at (a page of the index or of the hash)

Returns {done, expired, orphans, empty}: how many entries were forgotten, by reason.
]]
local bound = ARGV[2] ~= '' and tonumber(ARGV[2]) or nil
local done, expired, orphans, empty = 0, 0, 0, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score then
    orphans = orphans + redis.call('HDEL', KEYS[2], id)
  else
    local phase = redis.call('HGET', ARGV[1] .. id, 'phase')
    local forget = false
    if phase == 'done' then
      done, forget = done + 1, true
    elseif not phase and bound and tonumber(score) < bound then
      expired, forget = expired + 1, true
    elseif redis.call('HEXISTS', KEYS[2], id) == 0 then
      empty, forget = empty + 1, true
    end
    if forget then
      redis.call('ZREM', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return {done, expired, orphans, empty}
