-- OAuth2/OIDC sign-in: the state of flows between /start and /callback, kept in PostgreSQL so
-- any API replica can finish a flow another started. Single use, ten-minute life.

CREATE TABLE oauth_flows (
    state_hash     text PRIMARY KEY,
    provider       text NOT NULL,
    pkce_verifier  text NOT NULL,
    nonce          text NOT NULL,
    redirect_uri   text NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN oauth_flows.state_hash IS 'SHA-256 of the state parameter; the state itself only travels through the browser';
COMMENT ON COLUMN oauth_flows.pkce_verifier IS 'PKCE code verifier, needed to redeem the code; useless without the provider''s code';

GRANT SELECT, INSERT, UPDATE, DELETE ON oauth_flows TO builderos_app;
