// Test identity provider for refresh-proxy's end-to-end tests.
//
// A real OAuth 2.0 / OpenID Connect server (the `oidc-provider` package, pinned to 8.8.1 because
// 9.x no longer runs on Node 20) with a fixed set of clients, development login/consent pages and
// a small test-only API. It is started by tests/support/idp.rs, one process per test.
//
// Environment:
//   PORT                   port to listen on, on 127.0.0.1 (0 or unset: any free port)
//   ISSUER                 issuer identifier; default http://127.0.0.1:<port>. Every absolute URL
//                          the server builds (discovery, form actions, redirects) uses the
//                          issuer's scheme and host, whatever Host header the request carried,
//                          so a proxy in front can use its own URL as the issuer. Routes are
//                          always mounted at the root path.
//   JWT_ACCESS_TOKENS=1    access tokens are JWTs (RFC 9068, typ at+jwt) for a default resource
//                          server; otherwise they are opaque.
//   ROTATE_REFRESH_TOKENS  "always" | "never" | unset. Unset keeps oidc-provider's default policy:
//                          rotate only for public clients (token_endpoint_auth_method none) or
//                          once a refresh token is past 70% of its lifetime (14 days).
//   EXIT_ON_STDIN_EOF=1    exit when stdin closes (the test process died without killing us).
//   BACKCHANNEL_LOGOUT_URI the `www` client's OpenID Connect Back-Channel Logout 1.0 endpoint
//                          (e.g. the proxy's upstream.backchannel_logout_path); turns the
//                          backchannelLogout feature on, with backchannel_logout_session_required.
//   SESSION_REFRESH_TOKENS=1  issue refresh tokens without offline_access too, bound to the
//                          login session (as Keycloak does): a logout at the IdP revokes them.
//   MTLS=1                 RFC 8705 certificate-bound tokens on for the `spa` client: the client
//                          certificate is read from an RFC 9440 `Client-Cert` header (as a
//                          TLS-terminating proxy in front passes it on), and a public client's
//                          refresh tokens are bound to it too.
//   MTLS_CA_FILE           (with MTLS=1) a PEM CA certificate: adds the client `mtls-pki`
//                          (tls_client_auth, RFC 8705 §2.1), whose certificate must be issued
//                          by that CA with the subject DN MTLS_PKI_SUBJECT_DN below.
//   MTLS_SELF_SIGNED_CERT  (with MTLS=1) a PEM self-signed certificate: adds the client
//                          `mtls-self` (self_signed_tls_client_auth, RFC 8705 §2.2) with that
//                          certificate in its jwks (x5c).
//   DPOP=1                 RFC 9449 DPoP on: a token request with a DPoP proof gets DPoP-bound
//                          tokens (token_type DPoP; a public client's refresh tokens are bound
//                          to the key too).
//
// Protocol with the test harness: once listening, exactly one line goes to stdout,
// `{"listening":<port>}`; everything else (oidc-provider's notices included) goes to stderr.
//
// Test-only routes (not part of any standard):
//   GET  /__test/grants        {"<grant_type>": <count>, ...} of every POST /token request seen,
//                              successful or not, keyed by its grant_type ("unknown" if absent)
//   POST /__test/grants/reset  zeroes those counters
//   GET  /__test/refresh_tokens  [{"token","client_id","sub","sid"}, ...] of every refresh token the
//                              IdP issued (opaque tokens: the value is the jti), oldest first
//   POST /__test/fail          {"path","count","status","delay"}: the next `count` requests to
//                              `path` wait `delay` ms (default 0), then answer `status` (default
//                              503) without reaching oidc-provider, as an overloaded or failing
//                              IdP would; status 0 passes them on after the delay (a slow IdP)

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { readFileSync } from 'node:fs';

// oidc-provider prints its notices with console.info, which goes to stdout; keep stdout for the
// one line the harness reads. Patched before oidc-provider is loaded (hence the dynamic import).
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const { default: Provider, errors } = await import('oidc-provider');

const env = process.env;
const requestedPort = Number.parseInt(env.PORT || '0', 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`invalid PORT ${JSON.stringify(env.PORT)}`);
  process.exit(2);
}
const jwtAccessTokens = env.JWT_ACCESS_TOKENS === '1';
const rotation = env.ROTATE_REFRESH_TOKENS || '';
if (!['', 'always', 'never'].includes(rotation)) {
  console.error(`invalid ROTATE_REFRESH_TOKENS ${JSON.stringify(rotation)} (always | never | unset)`);
  process.exit(2);
}

// The resource server that JWT access tokens are issued for (JWT_ACCESS_TOKENS=1 only).
const API_RESOURCE = 'urn:refresh-proxy:test-api';
const API_SCOPES = 'read write';
const REDIRECT_URI = 'http://127.0.0.1/callback';
const backchannelLogoutUri = env.BACKCHANNEL_LOGOUT_URI || '';

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = env.ISSUER || `http://127.0.0.1:${port}`;
let issuerUrl;
try {
  issuerUrl = new URL(issuer);
} catch {
  console.error(`invalid ISSUER ${JSON.stringify(issuer)}`);
  process.exit(2);
}

// The public half of a test-only client key (test-client-keys.json holds the private JWKs).
const clientKeys = JSON.parse(
  readFileSync(new URL('./test-client-keys.json', import.meta.url), 'utf8'),
);
function publicJwk(name) {
  const {
    d, p, q, dp, dq, qi, ...pub
  } = clientKeys[name];
  return pub;
}

// RFC 8705 §2 clients (MTLS=1): the CA and the self-signed certificate come from the test.
const MTLS_PKI_SUBJECT_DN = 'CN=mtls-pki-client,O=refresh-proxy tests';
const mtlsCa = env.MTLS === '1' && env.MTLS_CA_FILE
  ? new crypto.X509Certificate(readFileSync(env.MTLS_CA_FILE))
  : undefined;
const mtlsSelfSigned = env.MTLS === '1' && env.MTLS_SELF_SIGNED_CERT
  ? new crypto.X509Certificate(readFileSync(env.MTLS_SELF_SIGNED_CERT))
  : undefined;
const mtlsClients = [];
if (mtlsCa) {
  mtlsClients.push({
    client_id: 'mtls-pki',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: MTLS_PKI_SUBJECT_DN,
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
  });
}
if (mtlsSelfSigned) {
  mtlsClients.push({
    client_id: 'mtls-self',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    tls_client_certificate_bound_access_tokens: true,
    jwks: {
      keys: [{
        ...mtlsSelfSigned.publicKey.export({ format: 'jwk' }),
        x5c: [mtlsSelfSigned.raw.toString('base64')],
      }],
    },
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
  });
}

// The client certificate of a request, as node's X509Certificate (undefined: none).
function requestCertificate(ctx) {
  const pem = configuration.features.mTLS.getCertificate(ctx);
  return pem ? new crypto.X509Certificate(pem) : undefined;
}

const configuration = {
  clients: [
    ...mtlsClients,
    {
      // Confidential client. oidc-provider 8.8.1 treats client_secret_basic and
      // client_secret_post as interchangeable at the token endpoint (both are accepted for a
      // client registered with either), so one client covers both methods.
      client_id: 'www',
      client_secret: 'Secr3t!',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
      post_logout_redirect_uris: [REDIRECT_URI],
      ...(backchannelLogoutUri
        ? { backchannel_logout_uri: backchannelLogoutUri, backchannel_logout_session_required: true }
        : {}),
    },
    {
      // Public client: no secret, PKCE (required for every client anyway, S256 only).
      client_id: 'spa',
      token_endpoint_auth_method: 'none',
      ...(env.MTLS === '1' ? { tls_client_certificate_bound_access_tokens: true } : {}),
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
    },
    {
      // private_key_jwt (RFC 7523 §2.2, OIDC Core §9) with ES256: the public part of the
      // test-only key pk-es-1 in test-client-keys.json (tests sign with client-assertion.mjs).
      client_id: 'pkjwt',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [publicJwk('pk-es-1')] },
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
    },
    {
      // private_key_jwt with EdDSA (Ed25519): the test-only key pk-ed-1.
      client_id: 'pkjwt-ed',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'EdDSA',
      jwks: { keys: [publicJwk('pk-ed-1')] },
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
    },
    {
      // client_secret_jwt with HS256: assertions MACed with the client secret.
      client_id: 'csjwt',
      client_secret: 'csjwt-secret-0123456789abcdef-0123456789',
      token_endpoint_auth_method: 'client_secret_jwt',
      token_endpoint_auth_signing_alg: 'HS256',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
    },
    {
      // Resource server: only authenticates to introspect (and revoke) tokens.
      client_id: 'rs',
      client_secret: 'rs-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  // The default methods, and the RFC 8705 ones when their clients are there.
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
    ...(mtlsCa ? ['tls_client_auth'] : []),
    ...(mtlsSelfSigned ? ['self_signed_tls_client_auth'] : []),
  ],
  // Per-process random cookie signing key (cookies then carry a .sig companion).
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'read', 'write'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Any login name is an account whose subject is that name.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: `Test User ${sub}`,
          given_name: 'Test',
          family_name: sub,
          preferred_username: sub,
          email: `${sub}@example.test`,
          email_verified: true,
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: backchannelLogoutUri !== '' },
    dPoP: { enabled: env.DPOP === '1' },
    mTLS: {
      enabled: env.MTLS === '1',
      certificateBoundAccessTokens: true,
      // RFC 9440 §2.2: `Client-Cert: :<base64 DER>:`, turned into the PEM oidc-provider reads.
      getCertificate(ctx) {
        const match = /^:([A-Za-z0-9+/=]+):$/.exec((ctx.get('client-cert') || '').trim());
        if (!match) return undefined;
        const lines = match[1].match(/.{1,64}/g).join('\n');
        return `-----BEGIN CERTIFICATE-----\n${lines}\n-----END CERTIFICATE-----\n`;
      },
      tlsClientAuth: mtlsCa !== undefined,
      selfSignedTlsClientAuth: mtlsSelfSigned !== undefined,
      // tls_client_auth: issued by MTLS_CA_FILE's CA and valid now (a TLS terminator would
      // check this; here the certificate comes in a header).
      certificateAuthorized(ctx) {
        const cert = requestCertificate(ctx);
        if (!cert || !mtlsCa) return false;
        const now = Date.now();
        return cert.checkIssued(mtlsCa) && cert.verify(mtlsCa.publicKey)
          && Date.parse(cert.validFrom) <= now && now <= Date.parse(cert.validTo);
      },
      // RFC 4514 text lists the last RDN first; node lists them in certificate order.
      certificateSubjectMatches(ctx, property, expected) {
        const cert = requestCertificate(ctx);
        if (!cert) return false;
        if (property === 'tls_client_auth_subject_dn') {
          return cert.subject.split('\n').reverse().join(',') === expected;
        }
        const kinds = {
          tls_client_auth_san_dns: 'DNS:',
          tls_client_auth_san_uri: 'URI:',
          tls_client_auth_san_ip: 'IP Address:',
          tls_client_auth_san_email: 'email:',
        };
        return (cert.subjectAltName || '').split(', ')
          .some((name) => name === `${kinds[property]}${expected}`);
      },
    },
    resourceIndicators: jwtAccessTokens
      ? {
        enabled: true,
        // Requests without a resource parameter are for the test API ...
        defaultResource: () => API_RESOURCE,
        // ... and so are the access tokens minted from codes and refresh tokens, even when
        // `openid` was requested (otherwise they would be opaque tokens for userinfo).
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resourceIndicator) {
          if (resourceIndicator !== API_RESOURCE) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: API_SCOPES,
            audience: API_RESOURCE,
            accessTokenTTL: 60 * 60,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      }
      : { enabled: false },
  },
  // No `pkce` setting: oidc-provider 8.8.1 requires PKCE (S256) for every authorization request.
  // No `adapter`: the built-in in-memory adapter, an LRU of 1,000 entries (sessions,
  // interactions, codes, tokens and grants all count), so a long test can see old entries
  // evicted. Fine for tests, one process per test.
};

if (env.SESSION_REFRESH_TOKENS === '1') {
  configuration.issueRefreshToken = async (ctx, client) => client.grantTypeAllowed('refresh_token');
}

if (rotation === 'always') {
  configuration.rotateRefreshToken = true;
} else if (rotation === 'never') {
  configuration.rotateRefreshToken = false;
}

const provider = new Provider(issuer, configuration);

// Build every absolute URL (form actions, redirects, discovery) from the issuer rather than from
// the request's Host header: trust X-Forwarded-Host/-Proto and overwrite them with the issuer's.
// Cookies are Secure only when the issuer is https (the request is then "secure").
provider.proxy = true;
provider.use(async (ctx, next) => {
  ctx.request.headers['x-forwarded-host'] = issuerUrl.host;
  ctx.request.headers['x-forwarded-proto'] = issuerUrl.protocol.replace(/:$/, '');
  await next();
});

// Token endpoint counters, by grant_type, for successes and errors alike. Read after the
// request has been handled, from the parameters oidc-provider already parsed.
let grantCounts = Object.create(null);
const refreshTokens = [];
provider.on('refresh_token.saved', (token) => {
  refreshTokens.push({
    token: token.jti, client_id: token.clientId, sub: token.accountId, sid: token.sid ?? null,
  });
});
const failing = new Map();
provider.use(async (ctx, next) => {
  const fail = failing.get(ctx.path);
  if (fail && fail.count > 0) {
    fail.count -= 1;
    if (fail.delay > 0) {
      await new Promise((resolve) => { setTimeout(resolve, fail.delay); });
    }
    if (fail.status > 0) {
      ctx.status = fail.status;
      ctx.body = { error: 'temporarily_unavailable' };
      return;
    }
  }
  if (ctx.path === '/__test/refresh_tokens' && ctx.method === 'GET') {
    ctx.set('cache-control', 'no-store');
    ctx.body = refreshTokens;
    return;
  }
  if (ctx.path === '/__test/fail' && ctx.method === 'POST') {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const { path, count, status, delay } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    failing.set(path, {
      count: Number(count), status: Number(status ?? 503), delay: Number(delay || 0),
    });
    ctx.status = 204;
    return;
  }
  await next();
});
provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/grants' && ctx.method === 'GET') {
    ctx.set('cache-control', 'no-store');
    ctx.body = { ...grantCounts };
    return;
  }
  if (ctx.path === '/__test/grants/reset' && ctx.method === 'POST') {
    grantCounts = Object.create(null);
    ctx.status = 204;
    return;
  }
  if (ctx.path !== '/token' || ctx.method !== 'POST') {
    await next();
    return;
  }
  try {
    await next();
  } finally {
    const grantType = ctx.oidc?.params?.grant_type || ctx.oidc?.body?.grant_type || 'unknown';
    const key = typeof grantType === 'string' ? grantType : 'unknown';
    grantCounts[key] = (grantCounts[key] || 0) + 1;
  }
});

provider.on('server_error', (ctx, err) => {
  console.error(`idp server_error on ${ctx.method} ${ctx.path}:`, err);
});

server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({ listening: port })}\n`);

if (env.EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

const shutdown = () => {
  server.close();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
