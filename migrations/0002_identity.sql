-- Identity and tenancy: users, sessions, orgs, memberships, projects, environments,
-- invitations, API tokens, magic links, the mail outbox, sign-in throttling, and the audit
-- event table that every mutating operation writes to in its own transaction.
--
-- Row-level security: every tenant table has RLS enabled AND forced, with policies keyed by
-- transaction-local settings the app sets with set_config(..., true):
--   app.org_id      the org a request acts in
--   app.user_id     the signed-in user (lets /v1/me see the user's own memberships)
--   app.token_hash  SHA-256 of a presented secret token (lets its holder find the one row
--                   it designates: an invitation or an API token), nothing else
-- A missing setting is NULL and matches no row.

CREATE FUNCTION app_org_id() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.org_id', true), '')::uuid $$;
CREATE FUNCTION app_user_id() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;
CREATE FUNCTION app_token_hash() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.token_hash', true), '') $$;

-- Users are global (one person, many orgs); not tenant-owned.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL,
    email_verified boolean NOT NULL DEFAULT false,
    display_name   text NOT NULL,
    password_hash  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);
CREATE UNIQUE INDEX users_email_key ON users (email);
COMMENT ON COLUMN users.email IS 'lower-cased; unique across the platform';
COMMENT ON COLUMN users.password_hash IS 'argon2id PHC string; NULL for accounts that only use magic links or OAuth';

-- Links from external identity providers to users.
CREATE TABLE user_identities (
    provider    text NOT NULL,
    subject     text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id),
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);

-- A session is one sign-in; its refresh tokens form a rotation family.
CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    auth_method text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    token_hash  text PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES sessions (id),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN refresh_tokens.used_at IS 'set when rotated; presenting a used token again revokes the whole session';

CREATE TABLE magic_links (
    token_hash  text PRIMARY KEY,
    email       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Sign-in throttling, shared by every API replica.
CREATE TABLE auth_throttle (
    key          text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL
);
COMMENT ON COLUMN auth_throttle.key IS 'account:<email> or addr:<ip>';

-- Outgoing mail, drained by the mailer with retries.
CREATE TABLE mail_outbox (
    id              uuid PRIMARY KEY,
    to_address      text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;

-- Tenancy ------------------------------------------------------------------------------------

CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX orgs_slug_key ON orgs (slug);

CREATE TABLE memberships (
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'builder', 'reviewer', 'viewer')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    slug        text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_org_slug_key UNIQUE (org_id, slug)
);

CREATE TABLE environments (
    id                 uuid PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id         uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name               text NOT NULL,
    protected          boolean NOT NULL DEFAULT false,
    required_approvals integer NOT NULL DEFAULT 0 CHECK (required_approvals BETWEEN 0 AND 10),
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT environments_project_name_key UNIQUE (project_id, name)
);

CREATE TABLE invitations (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    email       text NOT NULL,
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'builder', 'reviewer', 'viewer')),
    token_hash  text NOT NULL UNIQUE,
    invited_by  uuid NOT NULL REFERENCES users (id),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid REFERENCES users (id),
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitations_org_idx ON invitations (org_id, created_at DESC);

CREATE TABLE api_tokens (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name             text NOT NULL,
    token_hash       text NOT NULL UNIQUE,
    token_prefix     text NOT NULL,
    permissions      text[] NOT NULL,
    project_id       uuid REFERENCES projects (id) ON DELETE CASCADE,
    created_by       uuid REFERENCES users (id),
    service_account  boolean NOT NULL DEFAULT false,
    expires_at       timestamptz,
    last_used_at     timestamptz,
    revoked_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_org_idx ON api_tokens (org_id, created_at DESC);
COMMENT ON COLUMN api_tokens.token_prefix IS 'first characters of the token, shown in lists so owners can recognise it';
COMMENT ON COLUMN api_tokens.created_by IS 'the user the token acts for; NULL for service-account tokens owned by the org';

-- Audit events: append-only, hash-chained per org (org_id NULL is the platform chain).
CREATE TABLE audit_events (
    id           uuid PRIMARY KEY,
    org_id       uuid,
    seq          bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    actor_type   text NOT NULL CHECK (actor_type IN ('user', 'token', 'system', 'anonymous')),
    actor_id     text,
    actor_name   text,
    auth_method  text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    outcome      text NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    request_id   text,
    client_addr  text,
    user_agent   text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash    text NOT NULL,
    hash         text NOT NULL
);
CREATE UNIQUE INDEX audit_events_chain_key ON audit_events ((coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid)), seq);
COMMENT ON COLUMN audit_events.hash IS 'SHA-256 over the canonical JSON of the event including prev_hash';

-- The head of each org's chain, locked FOR UPDATE by each writer so one org's events form
-- one gapless chain even under concurrent writers.
CREATE TABLE audit_heads (
    chain_id  uuid PRIMARY KEY,
    seq       bigint NOT NULL,
    hash      text NOT NULL
);
COMMENT ON COLUMN audit_heads.chain_id IS 'the org id, or the nil uuid for platform events (sign-up, sign-in)';

-- Row-level security -------------------------------------------------------------------------

ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY orgs_tenant ON orgs
    USING (id = app_org_id()
           OR EXISTS (SELECT 1 FROM memberships m WHERE m.org_id = orgs.id AND m.user_id = app_user_id()))
    WITH CHECK (id = app_org_id());

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY memberships_tenant ON memberships
    USING (org_id = app_org_id() OR user_id = app_user_id())
    WITH CHECK (org_id = app_org_id());

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
CREATE POLICY projects_tenant ON projects
    USING (org_id = app_org_id()) WITH CHECK (org_id = app_org_id());

ALTER TABLE environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE environments FORCE ROW LEVEL SECURITY;
CREATE POLICY environments_tenant ON environments
    USING (org_id = app_org_id()) WITH CHECK (org_id = app_org_id());

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY invitations_tenant ON invitations
    USING (org_id = app_org_id() OR token_hash = app_token_hash())
    WITH CHECK (org_id = app_org_id());

ALTER TABLE api_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY api_tokens_tenant ON api_tokens
    USING (org_id = app_org_id() OR token_hash = app_token_hash())
    WITH CHECK (org_id = app_org_id());

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_events_tenant ON audit_events
    USING (org_id = app_org_id())
    WITH CHECK (org_id IS NULL OR org_id = app_org_id());

ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_heads_tenant ON audit_heads
    USING (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid))
    WITH CHECK (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid));

-- Privileges of the app -----------------------------------------------------------------------

GRANT SELECT, INSERT, UPDATE ON users, user_identities, sessions, refresh_tokens, magic_links,
    mail_outbox TO builderos_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON auth_throttle TO builderos_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON orgs, memberships, projects, environments,
    invitations, api_tokens TO builderos_app;
GRANT SELECT, INSERT, UPDATE ON audit_heads TO builderos_app;
-- Append-only: no UPDATE, DELETE or TRUNCATE for the app.
GRANT SELECT, INSERT ON audit_events TO builderos_app;
