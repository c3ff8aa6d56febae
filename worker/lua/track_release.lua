--[[ track_release.lua — close claimed sessions once their cancels are enqueued.

KEYS[1]  claimed sessions   idvcancel:track:claimed:<provider>  (zset reference, score = s)
ARGV[1]  the session hash prefix  idvcancel:track:session:<provider>:
ARGV[2]  now (epoch seconds)
ARGV[3]  how long a closed session is remembered (s)
ARGV[4..] the references

Returns the number of sessions closed.
]]
redis.call('ZREM', KEYS[1], unpack(ARGV, 4))
for i = 4, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  redis.call('HSET', key, 'state', 'closed', 'closed_at', ARGV[2])
  redis.call('EXPIRE', key, ARGV[3])
end
return #ARGV - 3
