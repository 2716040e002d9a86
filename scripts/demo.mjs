// Small helpers for scripts/demo, which needs Node anyway (for the bundled IdP), so that the
// demo itself needs nothing but bash, curl and node: no jq, python or openssl.
//
//   node scripts/demo.mjs ports N          N distinct free ports on 127.0.0.1, space separated
//   node scripts/demo.mjs pkce             a PKCE code_verifier and its S256 code_challenge
//   node scripts/demo.mjs random           16 random bytes, base64url (for state and nonce)
//   node scripts/demo.mjs show FILE        an HTTP answer body: JSON pretty-printed, each JWT
//                                          shortened and its header and claims decoded below
//                                          (decoded, not verified); anything else as it is
//   node scripts/demo.mjs get FILE PATH    one value of the JSON in FILE, e.g. `scope`, or
//                                          `access_token.scope` (a claim of the JWT in that
//                                          field); strings bare, other values as JSON,
//                                          nothing when absent
//   node scripts/demo.mjs target-dir       cargo's target directory (reads `cargo metadata`
//                                          on stdin)

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';

const [command, ...args] = process.argv.slice(2);

function b64url(bytes) {
  return Buffer.from(bytes).toString('base64url');
}

// The header and claims of a compact JWS, or null when `s` is not one.
function decodeJwt(s) {
  if (typeof s !== 'string') return null;
  const parts = s.split('.');
  if (parts.length !== 3 || !s.startsWith('eyJ')) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (typeof header !== 'object' || header === null || !header.alg) return null;
    return { header, claims };
  } catch {
    return null;
  }
}

function readJson(file) {
  const text = fs.readFileSync(file, 'utf8');
  try {
    return { ok: true, value: JSON.parse(text), text };
  } catch {
    return { ok: false, text };
  }
}

function indent(text, prefix) {
  return text.split('\n').map((line) => prefix + line).join('\n');
}

async function freePorts(n) {
  // All bound at once, so they differ; released just before the demo binds them.
  const servers = [];
  for (let i = 0; i < n; i += 1) {
    const server = net.createServer();
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    servers.push(server);
  }
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

switch (command) {
  case 'ports': {
    const n = Number.parseInt(args[0] || '1', 10);
    console.log((await freePorts(n)).join(' '));
    break;
  }
  case 'pkce': {
    const verifier = b64url(crypto.randomBytes(32));
    const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
    console.log(`${verifier} ${challenge}`);
    break;
  }
  case 'random':
    console.log(b64url(crypto.randomBytes(16)));
    break;
  case 'show': {
    const body = readJson(args[0]);
    if (!body.ok) {
      console.log(body.text.length === 0 ? '(empty body)' : body.text.replace(/\n$/, ''));
      break;
    }
    const decoded = [];
    const shown = JSON.stringify(
      body.value,
      (key, value) => {
        const jwt = decodeJwt(value);
        if (jwt === null) return value;
        decoded.push([key, jwt]);
        return `${value.slice(0, 20)}…(a JWT, ${value.length} chars, decoded below)`;
      },
      2,
    );
    console.log(shown);
    for (const [key, jwt] of decoded) {
      console.log(`${key}, decoded (not verified here):`);
      console.log(indent(`header ${JSON.stringify(jwt.header)}`, '  '));
      console.log(indent(`claims ${JSON.stringify(jwt.claims, null, 2)}`, '  '));
    }
    break;
  }
  case 'get': {
    const body = readJson(args[0]);
    if (!body.ok) break;
    let value = body.value;
    for (const segment of (args[1] || '').split('.').filter(Boolean)) {
      const jwt = decodeJwt(value);
      if (jwt !== null) value = jwt.claims;
      if (value === null || typeof value !== 'object' || !(segment in value)) {
        value = undefined;
        break;
      }
      value = value[segment];
    }
    if (value === undefined) break;
    console.log(typeof value === 'string' ? value : JSON.stringify(value));
    break;
  }
  case 'target-dir': {
    const metadata = JSON.parse(fs.readFileSync(0, 'utf8'));
    console.log(metadata.target_directory);
    break;
  }
  default:
    console.error(`usage: node scripts/demo.mjs ports N | pkce | random | show FILE | get FILE PATH | target-dir`);
    process.exit(2);
}
