-- Foundation: the privileges model every later migration builds on.
--
-- Migrations run as the schema owner. The app connects as a LOGIN role that is a member of the
-- NOLOGIN group `builderos_app` (created by `builderos migrate` when missing). The app role is
-- neither superuser, nor BYPASSRLS, nor the owner of any table, so row-level security applies
-- to it. Each later migration grants exactly the privileges the app needs, table by table
-- (audit events get INSERT and SELECT only).

GRANT USAGE ON SCHEMA public TO builderos_app;

-- Sequences behind identity columns: the app may draw from them.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO builderos_app;

-- Nobody but the owner creates objects in the schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
