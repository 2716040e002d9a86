// Client assertions (RFC 7523 §2.2, OIDC Core §9) for refresh-proxy's tests, made by `jose`
// (an independent JOSE library, not the proxy's code). One node start serves many requests.
//
//   node client-assertion.mjs '<JSON array of specs>'
//
// prints one compact JWS per spec, one per line. A spec:
//   client   the client id: iss and sub (unless overridden in claims)
//   aud      the audience (string or array)
//   key      a key name in test-client-keys.json (private JWKs made for these tests only), or
//   secret   the client secret (HS256/384/512)
//   alg      the JWS alg (default: the key's alg, or HS256); "none" makes an unsigned JWT
//   kid      the header's kid (default: the key's name; null: no kid)
//   exp_in   seconds from now to exp (default 60); iat is now
//   claims   overrides: a value replaces the claim, null removes it (e.g. {"jti": null})
// jti is random unless overridden.

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT, importJWK, base64url } from 'jose';

const keys = JSON.parse(readFileSync(new URL('./test-client-keys.json', import.meta.url), 'utf8'));
const specs = JSON.parse(process.argv[2] || '[]');
const now = Math.floor(Date.now() / 1000);
const lines = [];
for (const spec of specs) {
  const jwk = spec.key ? keys[spec.key] : undefined;
  if (spec.key && !jwk) throw new Error(`unknown key ${spec.key}`);
  const alg = spec.alg || (jwk ? jwk.alg : 'HS256');
  const claims = {
    iss: spec.client,
    sub: spec.client,
    aud: spec.aud,
    jti: crypto.randomUUID(),
    iat: now,
    exp: now + (spec.exp_in ?? 60),
  };
  for (const [k, v] of Object.entries(spec.claims || {})) {
    if (v === null) delete claims[k];
    else claims[k] = v;
  }
  const header = { alg };
  const kid = spec.kid === undefined ? spec.key : spec.kid;
  if (kid) header.kid = kid;
  if (alg === 'none') {
    const enc = (o) => base64url.encode(JSON.stringify(o));
    lines.push(`${enc(header)}.${enc(claims)}.`);
    continue;
  }
  const key = jwk ? await importJWK(jwk, alg) : new TextEncoder().encode(spec.secret);
  lines.push(await new SignJWT(claims).setProtectedHeader(header).sign(key));
}
process.stdout.write(`${lines.join('\n')}\n`);
