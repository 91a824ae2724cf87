// A real OpenID provider for the single sign-on tests: `oidc-provider` (npm) on
// 127.0.0.1, issuer http://localhost:<port> (another site than the server's 127.0.0.1, as
// an organisation's provider is), one confidential client (client_secret_basic, PKCE
// S256, the server's callback as its only redirect URI), an RS256 key made at start, and
// the provider's own development login and consent pages (any password).
//
//   node oidc-provider.mjs <port> <redirect-uri> <client-secret>
//
// Users and their `groups` claim (released with the `groups` scope, at userinfo, as code
// flow providers do by default): ann → readers; bob → admins, readers; eve → contractors
// (mapped to nothing). Prints `ready <issuer>` once listening. Stops on SIGTERM or SIGINT,
// and by itself after 15 minutes.

import Provider from 'oidc-provider';
import { generateKeyPairSync } from 'node:crypto';

const [port, redirectUri, secret] = process.argv.slice(2);
if (!port || !redirectUri || !secret) {
  console.error('usage: node oidc-provider.mjs <port> <redirect-uri> <client-secret>');
  process.exit(2);
}

const GROUPS = { ann: ['readers'], bob: ['admins', 'readers'], eve: ['contractors'] };
const NAMES = { ann: 'Ann Reader', bob: 'Bob Admin', eve: 'Eve Contractor' };

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const issuer = `http://localhost:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'kernelize-console',
      client_secret: secret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'profile', 'groups'],
  claims: { openid: ['sub'], profile: ['name'], groups: ['groups'] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, name: NAMES[sub] || sub, groups: GROUPS[sub] || [] };
      },
    };
  },
});
provider.on('server_error', (ctx, err) => console.error(`[oidc-provider] server error: ${err.message}`));

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setTimeout(() => {
  console.error('[oidc-provider] 15 minutes passed: stopping');
  process.exit(1);
}, 15 * 60 * 1000).unref();
