// Verifies a JWT with an independent JOSE implementation (npm `jose` v5, installed here as a
// dependency of oidc-provider), for tests of the proxy's own token signing.
//
//   node verify-jwt.mjs <jwks_url> <token> [<issuer>]
//
// Fetches the JWK Set from <jwks_url>, verifies <token> (algorithms ES256, EdDSA, RS256; the
// issuer too when given; exp/nbf against the current time) and prints one JSON line on stdout:
//   {"header": <protected header>, "payload": <claims>, "thumbprint": <RFC 7638 thumbprint of
//    the key that verified it, computed by jose>}
// and exits 0. On any failure it prints "<code>: <message>" on stderr and exits 1.
import * as jose from 'jose';

const [jwksUrl, token, issuer] = process.argv.slice(2);
if (!jwksUrl || !token) {
  console.error('usage: node verify-jwt.mjs <jwks_url> <token> [<issuer>]');
  process.exit(2);
}

try {
  const jwks = jose.createRemoteJWKSet(new URL(jwksUrl), { timeoutDuration: 10_000 });
  const options = { algorithms: ['ES256', 'EdDSA', 'RS256'] };
  if (issuer) options.issuer = issuer;
  const { payload, protectedHeader, key } = await jose.jwtVerify(token, jwks, options);
  const thumbprint = await jose.calculateJwkThumbprint(await jose.exportJWK(key), 'sha256');
  process.stdout.write(`${JSON.stringify({ header: protectedHeader, payload, thumbprint })}\n`);
  process.exit(0);
} catch (err) {
  console.error(`${err.code ?? err.name}: ${err.message}`);
  process.exit(1);
}
