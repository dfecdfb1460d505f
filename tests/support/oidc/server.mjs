// A real OAuth2/OIDC server for the tests (oauth2-mock-server), on loopback.
//
// usage: node server.mjs PORT CLAIMS_FILE
// Prints "ready <issuer url>" once listening; exits when stdin closes (the test holds it).
// Before signing each token it applies CLAIMS_FILE, if present:
//   {"claims": {...merged into the payload...}, "exp_offset": seconds, "delete": ["claim", ...]}
import { existsSync, readFileSync } from 'node:fs';
import { Events, OAuth2Server } from 'oauth2-mock-server';

const [port, claimsFile] = process.argv.slice(2);
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on(Events.BeforeTokenSigning, (token) => {
  if (!claimsFile || !existsSync(claimsFile)) return;
  const spec = JSON.parse(readFileSync(claimsFile, 'utf8'));
  Object.assign(token.payload, spec.claims ?? {});
  if (spec.exp_offset !== undefined) token.payload.exp = Math.floor(Date.now() / 1000) + spec.exp_offset;
  for (const claim of spec.delete ?? []) delete token.payload[claim];
});
await server.start(Number(port), '127.0.0.1');
console.log(`ready ${server.issuer.url}`);
process.stdin.resume();
process.stdin.on('end', async () => {
  await server.stop();
  process.exit(0);
});
