-- One redemption of a refresh token: the twin of grant::rules::redeem (src/grant/rules.rs),
-- run atomically next to the family's state. Keep the two in step; the store contract suite
-- (tests/store_contract.rs) runs the same cases against both.
--
-- KEYS[1]  the family hash            <prefix>{<family>}:f
-- KEYS[2]  an opaque access token key <prefix>{<family>}:at:<digest>  (same slot)
-- KEYS[3..] one-time identifiers the request carries  <prefix>used:<digest>  (a single node
--          only: a cluster checks them before, see mod.rs), each remembered until
--          ARGV[20 + i] for KEYS[i]
-- ARGV     1 presented generation, 2 client id, 3 scope given ('0'|'1'), 4 scope,
--          5 now (ms), 6 grace (ms), 7 idle ttl (ms), 8 reuse refresh tokens ('0'|'1'),
--          9 access token issued (ms), 10 access token expires (ms; '0' = no candidate),
--          11 presented token's verifier, 12 its successor's verifiers, one per
--          refresh-token key (12 bytes each, the current key's first),
--          13 'ahead of' generation ('' = none), 14 'ahead of' verifier,
--          15 upstream check interval (ms; '' = no check, '0' = every refresh), 16 its lease
--          (ms), 17 how long past
--          the interval a failed check is served (ms), 18 the fencing token of this caller's
--          check ('' = none), 19 its outcome ('ok' | 'fail' | 'revoke'), 20 the upstream's new
--          refresh token, sealed ('' = unchanged), 21 the upstream's answer, sealed, for an
--          'upstream'-format family ('' = none), 22 the keys the request proved it holds
--          ('jkt:...' and 'x5t#S256:...', separated by spaces; '' = none)
-- Returns  one MessagePack array of strings (cmsgpack.pack, the scripting engine's own C
--          encoder): a single bulk reply is parsed by the proxy in one step, where an array
--          reply costs a parse and an allocation per field (docs/design.md §6). The array is
--          {'replayed', index (0-based, of KEYS[3..])}, {'unknown'}, {'corrupt'} or
--          {verdict, generation, scope, client, subject, format, at claims, id claims,
--           auth time, opaque stored ('0'|'1'), current generation, granted scope,
--           absolute deadline, seal, verifier ('ahead' only), successor key index
--           ('grace' only), the kept upstream refresh token ('reuse' and 'check_due' only;
--           for 'grace' of an 'upstream'-format family, the kept upstream answer),
--           the key the family is bound to ('' = none)}
--          'check_due' carries its fencing token and 'check_in_flight' the lease's end in the
--          generation field.
local function int(x) return string.format('%.0f', x) end

-- One-time identifiers (a client assertion's or a DPoP proof's jti) before anything else: a
-- replay changes nothing (docs/design.md §4.15).
for i = 3, #KEYS do
  if not redis.call('SET', KEYS[i], '1', 'NX', 'PXAT', ARGV[20 + i]) then
    return cmsgpack.pack({'replayed', tostring(i - 3)})
  end
end

local f = redis.call('HMGET', KEYS[1], 'c', 's', 'g', 'sc', 'n', 'r', 'i', 'e', 'f', 'a', 'd', 't', 'v',
  'u', 'k', 'lf', 'lu', 'cf', 'b')
if not f[1] then return cmsgpack.pack({'unknown'}) end
-- Fields at their default are left out ('sc' until it differs from 'g'): see CREATE in mod.rs.
local client, subject, granted, scope = f[1], f[2], f[3], f[4] or f[3]
local n, rotated, idle, expires = tonumber(f[5] or '0'), tonumber(f[6]), tonumber(f[7]), tonumber(f[8])
local fmt, atc, idc, auth = f[9] or 'jwt', f[10] or '', f[11] or '', f[12] or ''
-- 'v' holds the live token's verifier (12 bytes) and the family's seal (12 bytes): one field
-- costs less than two (see CREATE in mod.rs).
local v, seal = string.sub(f[13] or '', 1, 12), string.sub(f[13] or '', 13)
-- A record this script cannot read (changed in the store, or written by something else) is
-- reported, not guessed at.
if not (subject and granted and n and rotated and idle and expires) then
  return cmsgpack.pack({'corrupt'})
end
local g, now = tonumber(ARGV[1]), tonumber(ARGV[5])
-- The upstream session check (docs/design.md §4.13): the kept token, when the upstream last
-- confirmed the family, the last fencing token, the lease's end, the last failure.
local kept, confirmed = f[14], tonumber(f[15] or f[6])
local fence, lease = tonumber(f[16] or '0'), tonumber(f[17] or '')
local failed = tonumber(f[18] or '')
-- The key the family is bound to (docs/design.md §4.16).
local bound = f[19] or ''

local key, out_token = 0, ''
local function reply(verdict, gen, sc, stored)
  return cmsgpack.pack({verdict, int(gen), sc, client, subject, fmt, atc, idc, auth, stored,
    int(n), granted, int(expires), seal,
    -- Only the verdicts that use them carry the verifier and the key index.
    verdict == 'ahead' and v or '', verdict == 'grace' and int(key) or '', out_token, bound})
end

if now >= expires or now >= idle then
  redis.call('DEL', KEYS[1])
  return reply('expired', 0, '', '0')
end
-- The outcome of this caller's upstream check, if its lease is still the family's.
local confirmed_now = false
if ARGV[18] ~= '' and lease and fence == tonumber(ARGV[18]) then
  lease = nil
  redis.call('HDEL', KEYS[1], 'lu')
  if ARGV[19] == 'ok' then
    confirmed, failed, confirmed_now = now, nil, true
    redis.call('HSET', KEYS[1], 'k', int(now))
    redis.call('HDEL', KEYS[1], 'cf')
    if ARGV[20] ~= '' then
      kept = ARGV[20]
      redis.call('HSET', KEYS[1], 'u', kept)
    end
    if ARGV[21] ~= '' then redis.call('HSET', KEYS[1], 'ua', ARGV[21]) end
  elseif ARGV[19] == 'fail' then
    failed = now
    redis.call('HSET', KEYS[1], 'cf', int(now))
  else
    redis.call('DEL', KEYS[1])
    return reply('check_revoked', 0, '', '0')
  end
end
-- The previous token again, within the grace period of its first use.
local grace = g < n and g + 1 == n and tonumber(ARGV[6]) > 0 and now - rotated <= tonumber(ARGV[6])
if g < n and not grace then
  -- RFC 9700 §4.14.2: a rotated-out token was presented again; revoke the family. Before
  -- every other check: a bad scope or client must not let it probe the family. The kept
  -- upstream token goes back, so the end can be told to the upstream.
  out_token = kept or ''
  redis.call('DEL', KEYS[1])
  return reply('reuse', g, '', '0')
end
-- The token must be this family's, not one made with the server key alone (the verifier is
-- a digest of the live token's secret part; see src/mint/refresh.rs).
local verified
if grace then
  -- Which key's successor the family holds (a key change between the first use and the retry).
  verified = false
  for i = 1, #ARGV[12], 12 do
    if string.sub(ARGV[12], i, i + 11) == v then verified, key = true, (i - 1) / 12; break end
  end
elseif g == n then verified = ARGV[11] == v
else verified = ARGV[13] == int(n) and ARGV[14] == v end
if not verified then
  if g > n and ARGV[13] == '' then return reply('ahead', n, '', '0') end
  return reply('unverified', 0, '', '0')
end
-- RFC 6749 §6: the refresh token must have been issued to the authenticated client.
if ARGV[2] ~= client then return reply('wrong_client', 0, '', '0') end
-- RFC 9449 §5: a bound refresh token is used only with a proof of its key.
if bound ~= '' and not string.find(' ' .. ARGV[22] .. ' ', ' ' .. bound .. ' ', 1, true) then
  return reply('wrong_key', 0, '', '0')
end

local effective = scope
if ARGV[3] == '1' then
  -- RFC 6749 §6: the requested scope MUST NOT include any scope not originally granted.
  local allowed, seen, out = {}, {}, {}
  for t in string.gmatch(granted, '[^ ]+') do allowed[t] = true end
  for t in string.gmatch(ARGV[4], '[^ ]+') do
    if not allowed[t] then return reply('invalid_scope', 0, '', '0') end
    if not seen[t] then seen[t] = true; out[#out + 1] = t end
  end
  effective = table.concat(out, ' ')
end

-- docs/design.md §4.13: the upstream confirms the session first, once per interval.
local interval = tonumber(ARGV[15] == '' and '0' or ARGV[15])

-- (Not again in the step that brought a confirmation: 'upstream'-format families check every
-- refresh.)
if not grace and not confirmed_now and ARGV[15] ~= '' and kept and now - confirmed >= interval then
  local lease_ms = tonumber(ARGV[16])
  if failed and now - failed < lease_ms then
    if now - confirmed >= interval + tonumber(ARGV[17]) then
      return reply('check_failed', 0, '', '0')
    end
    -- Served from the store, within upstream_unreachable_max.
  elseif lease and lease > now then
    return reply('check_in_flight', lease, '', '0')
  else
    fence = fence + 1
    redis.call('HSET', KEYS[1], 'lf', int(fence), 'lu', int(now + lease_ms))
    out_token = kept
    return reply('check_due', fence, '', '0')
  end
end

local new_idle = math.min(now + tonumber(ARGV[7]), expires)
local verdict, gen
if grace then
  verdict, gen = 'grace', n
  if fmt == 'upstream' then out_token = redis.call('HGET', KEYS[1], 'ua') or '' end
else
  if effective ~= scope then redis.call('HSET', KEYS[1], 'sc', effective) end
  if g == n and ARGV[8] == '1' then
    redis.call('HSET', KEYS[1], 'i', int(new_idle))
    redis.call('PEXPIREAT', KEYS[1], int(new_idle))
    verdict, gen = 'reused', n
  else
    redis.call('HSET', KEYS[1], 'n', int(g + 1), 'r', int(now), 'i', int(new_idle), 'v', string.sub(ARGV[12], 1, 12) .. seal)
    redis.call('PEXPIREAT', KEYS[1], int(new_idle))
    verdict, gen = 'rotated', g + 1
  end
end

local stored = '0'
local at_expires = tonumber(ARGV[10])
if fmt == 'opaque' and at_expires > 0 then
  local record = '{"c":' .. cjson.encode(client) .. ',"s":' .. cjson.encode(subject) ..
    ',"sc":' .. cjson.encode(effective) .. ',"iat":' .. ARGV[9] .. ',"exp":' .. ARGV[10] ..
    (ARGV[22] ~= '' and ',"b":' .. cjson.encode(ARGV[22]) or '') .. '}'
  redis.call('SET', KEYS[2], record, 'PXAT', ARGV[10])
  stored = '1'
end
return reply(verdict, gen, effective, stored)
