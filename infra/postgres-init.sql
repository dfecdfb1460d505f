-- Roles for the compose stack (runs once, when the postgres volume is first created).
-- Dev-only passwords come from compose's environment; use real secrets anywhere else.
\set owner_password `echo "$BUILDEROS_OWNER_PASSWORD"`
\set app_password `echo "$BUILDEROS_APP_PASSWORD"`
CREATE ROLE builderos_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE builderos_app NOLOGIN;
CREATE ROLE builderos_maintenance NOLOGIN;
GRANT builderos_maintenance TO builderos_owner;
CREATE ROLE builderos_api LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'app_password' IN ROLE builderos_app;
CREATE DATABASE builderos OWNER builderos_owner;
