-- The redis-benchmark baseline: a 2-key rotation script of the same shape and cost as the
-- JWT path of src/store/redis/redeem.lua, so `redis-benchmark EVALSHA` measures what one refresh
-- asks of Redis, without the proxy.
--
-- Same work per call: HMGET of the 19 fields redeem.lua reads (those the admin API's families
-- leave out come back nil, as there), the expiry, client, generation and verifier checks, an
-- HSET of 4 fields (scope unchanged; the new verifier) and a PEXPIREAT on that hash, and an
-- 18-string reply packed with cmsgpack, as redeem.lua answers. KEYS[2] is passed (one per call, same slot as KEYS[1] in the proxy) but, as on the
-- proxy's JWT path, not written; only opaque access tokens write it.
--
-- The hashes are pre-populated by bench/harness.py (field values of the sizes the admin API's
-- families have, deadlines far in the future). Unlike redeem.lua, every call rotates: the
-- presented generation is taken to be the current one, so random keys from redis-benchmark
-- (-r) never fall into the reuse branch.
--
-- KEYS[1] family hash, KEYS[2] access-token key (unused)
-- ARGV[1] client id, ARGV[2] now (ms), ARGV[3] idle ttl (ms), ARGV[4] grace (ms),
-- ARGV[5] presented verifier, ARGV[6] successor verifier (12 bytes each)

local v = redis.call('HMGET', KEYS[1], 'c', 's', 'g', 'sc', 'n', 'r', 'i', 'e', 'f', 'a', 'd', 't', 'v',
  'u', 'k', 'lf', 'lu', 'cf', 'b')
if not v[1] then return {'unknown'} end

local now = tonumber(ARGV[2])
local generation = tonumber(v[5])
local idle_deadline, hard_deadline = tonumber(v[7]), tonumber(v[8])

if now >= hard_deadline or now >= idle_deadline then
  redis.call('DEL', KEYS[1])
  return {'expired'}
end
if v[1] ~= ARGV[1] then return {'wrong_client'} end
if generation + 1 == generation or tonumber(ARGV[4]) < 0 then return {'grace'} end
-- The verifier comparison redeem.lua makes; every call here rotates, so its result is not used.
local verified = ARGV[5] == string.sub(v[13], 1, 12)
local seal = string.sub(v[13], 13)

local next_idle = math.min(now + tonumber(ARGV[3]), hard_deadline)
local next_generation = generation + 1
redis.call('HSET', KEYS[1], 'n', string.format('%.0f', next_generation),
  'r', string.format('%.0f', now), 'i', string.format('%.0f', next_idle), 'v', ARGV[6] .. seal)
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', next_idle))

-- Packed as redeem.lua packs its answer: one MessagePack array of strings.
-- Fields at their default may be absent, so defaulted as redeem.lua does (no holes).
return cmsgpack.pack({'rotated', string.format('%.0f', next_generation), v[4] or v[3], v[1], v[2],
  v[9] or 'jwt', v[10] or '', v[11] or '', v[12] or '', '0', v[5], v[3], v[8], seal,
  string.sub(v[13], 1, 12), '0', '', ''})
