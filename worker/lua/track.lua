--[[ track.lua — record one session report, and supersede the application's prior session.

All in one script so that two reports racing for one application can neither both miss
the prior session nor both cancel it: whichever runs first claims the prior, the second
finds the pointer already on the first one's session (and supersedes that one instead).

Keys (worker/keys.py; <p> = provider):
KEYS[1]  session hash      idvcancel:track:session:<p>:<reference>
KEYS[2]  active sessions   idvcancel:track:active:<p>   (zset, score = last activity, s)
KEYS[3]  claimed sessions  idvcancel:track:claimed:<p>  (zset, score = claim time, s)
KEYS[4]  app pointers      idvcancel:track:apps:<p>     (hash application_id -> reference)

The prior session's hash is ARGV[9] .. <prior reference>: a key computed here, which is
fine on the single Redis idv-cancel runs on (the broker and audit chain need one anyway)
but would not be on Redis Cluster.

ARGV[1]  reference
ARGV[2]  application_id
ARGV[3]  status
ARGV[4]  last activity, epoch seconds
ARGV[5]  options, JSON object
ARGV[6]  "1" when the status is still actionable by the provider's rules, else ""
ARGV[7]  now, epoch seconds
ARGV[8]  retention of a closed session's hash, seconds
ARGV[9]  session hash prefix  idvcancel:track:session:<p>:

Session hash fields (strings; the provider is in the key): reference, application_id,
status, last_activity, options, state (active | claimed | closed), updated_at, and once
claimed: claim (sweep | supersede), claimed_at, superseded_by.

Returns {verdict, prior reference or "", prior hash as a flat field/value list...} where
verdict is "active" (tracked or updated), "dropped" (terminal: out of tracking) or
"ignored" (a cancel for it is already on its way or sent: the report changes nothing).
]]
local ref, app, status = ARGV[1], ARGV[2], ARGV[3]
local now = ARGV[7]
local state = redis.call('HGET', KEYS[1], 'state')

-- Forget the pointer of `application` if it still names this session.
local function unpoint(application)
  if application and redis.call('HGET', KEYS[4], application) == ref then
    redis.call('HDEL', KEYS[4], application)
  end
end

if state == 'closed' then
  -- Finished (terminal, superseded or swept): a late report must not revive it.
  return {'ignored', ''}
end

if ARGV[6] ~= '1' then
  -- Terminal: out of tracking. Kept as "closed" for a while, for the reason above; a
  -- claim still pending is withdrawn (its sweep may still send it: the provider will
  -- answer not cancellable, which is true).
  unpoint(redis.call('HGET', KEYS[1], 'application_id'))
  unpoint(app)
  redis.call('ZREM', KEYS[2], ref)
  redis.call('ZREM', KEYS[3], ref)
  redis.call('HSET', KEYS[1], 'reference', ref, 'application_id', app, 'status', status,
             'state', 'closed', 'updated_at', now)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
  return {'dropped', ''}
end

if state == 'claimed' then
  -- Its cancel is being enqueued: progress now would not stop it.
  return {'ignored', ''}
end

local prior = ''
local prior_fields = {}
if not state then
  -- A new session: the application's in-flight session at this provider, if another
  -- one, is superseded (claimed here, cancelled by the caller, released after).
  local current = redis.call('HGET', KEYS[4], app)
  if current and current ~= ref and redis.call('ZSCORE', KEYS[2], current) then
    prior = current
    local prior_key = ARGV[9] .. prior
    redis.call('ZREM', KEYS[2], prior)
    redis.call('ZADD', KEYS[3], now, prior)
    redis.call('HSET', prior_key, 'state', 'claimed', 'claim', 'supersede',
               'claimed_at', now, 'superseded_by', ref)
    prior_fields = redis.call('HGETALL', prior_key)
  end
  redis.call('HSET', KEYS[4], app, ref)
else
  -- A progress report: a session moved to another application leaves the old pointer.
  local old_app = redis.call('HGET', KEYS[1], 'application_id')
  if old_app ~= app then
    unpoint(old_app)
  end
  if not redis.call('HGET', KEYS[4], app) then
    redis.call('HSET', KEYS[4], app, ref)
  end
end

-- Activity only moves forward: a report delivered late must not make a session look
-- idle for longer than it is.
local activity = tonumber(ARGV[4])
local known = tonumber(redis.call('ZSCORE', KEYS[2], ref) or '0')
if known > activity then
  activity = known
end
local activity_text = string.format('%.3f', activity)
redis.call('ZADD', KEYS[2], activity_text, ref)
redis.call('HSET', KEYS[1], 'reference', ref, 'application_id', app, 'status', status,
           'last_activity', activity_text, 'options', ARGV[5], 'state', 'active',
           'updated_at', now)
redis.call('PERSIST', KEYS[1])

local reply = {'active', prior}
for _, value in ipairs(prior_fields) do
  reply[#reply + 1] = value
end
return reply
