// Makes DPoP proofs (RFC 9449 §4.2) with an independent JOSE implementation (npm `jose` v5,
// installed here as a dependency of oidc-provider), for the proxy's end-to-end DPoP tests.
//
//   echo '<request>' | node dpop-proofs.mjs
//
// The request (JSON on stdin):
//   {"key": <a private JWK from an earlier answer, or null for a new key>,
//    "alg": "ES256" (for a new key; default ES256),
//    "proofs": [{"htm": "POST", "htu": "<url>", "nonce": "<optional>", "iat": <optional seconds>,
//                "jti": "<optional; default random>", "typ": "<optional; default dpop+jwt>"}, ...]}
// The answer (one JSON line on stdout):
//   {"key": <the private JWK>, "jkt": <RFC 7638 thumbprint of its public key, by jose>,
//    "proofs": ["<compact JWS>", ...]}
import * as crypto from 'node:crypto';
import * as jose from 'jose';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const alg = request.alg || 'ES256';

let privateJwk = request.key;
if (!privateJwk) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  privateJwk = { ...(await jose.exportJWK(privateKey)), alg };
}
const privateKey = await jose.importJWK(privateJwk, privateJwk.alg || alg);
// The public members only, as the proof's header carries them.
const { d, p, q, dp, dq, qi, ...publicJwk } = privateJwk;
delete publicJwk.alg;
const jkt = await jose.calculateJwkThumbprint(publicJwk, 'sha256');

const proofs = [];
for (const p of request.proofs || []) {
  const claims = {
    htm: p.htm || 'POST',
    htu: p.htu,
    iat: p.iat ?? Math.floor(Date.now() / 1000),
    jti: p.jti ?? crypto.randomUUID(),
  };
  if (p.nonce) claims.nonce = p.nonce;
  proofs.push(await new jose.SignJWT(claims)
    .setProtectedHeader({ alg: privateJwk.alg || alg, typ: p.typ || 'dpop+jwt', jwk: publicJwk })
    .sign(privateKey));
}
process.stdout.write(`${JSON.stringify({ key: privateJwk, jkt, proofs })}\n`);
