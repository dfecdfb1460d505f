-- The journal's row checks move into its insert policy.
--
-- Every audited request inserts one row into `audit_journal` (0012), and PostgreSQL prepares a
-- table's CHECK constraints anew for every statement that inserts into it: each is read back
-- from its stored form and run through the expression planner, per execution, even for a
-- cached plan. The journal's three checks made its insert about twice as costly as the
-- request's own update of a row: measured alone (pgbench, one client, the transaction of a
-- project rename plus the journal insert), the insert took 43-53 µs with them and 24-30 µs
-- without (three alternating pairs).
--
-- A policy's expressions, unlike checks, are planned into the statement's cached plan once. The
-- app's role can only insert into the journal through `audit_journal_tenant`, so the same
-- conditions there hold for every row the app adds; a row that breaks one is refused as a
-- row-level security violation instead of a check violation. `audit_events` keeps its checks
-- (sealing inserts a batch per statement), so a row put in the journal by other means (only the
-- owner or a superuser can) still can't be sealed, as before.
ALTER TABLE audit_journal DROP CONSTRAINT audit_journal_actor_type_check;
ALTER TABLE audit_journal DROP CONSTRAINT audit_journal_outcome_check;
ALTER TABLE audit_journal DROP CONSTRAINT audit_journal_check;

ALTER POLICY audit_journal_tenant ON audit_journal
    WITH CHECK (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid)
                AND (org_id IS NULL OR org_id = app_org_id())
                -- An event's chain is its org's (or the platform's).
                AND chain_id = coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid)
                AND actor_type IN ('user', 'token', 'system', 'anonymous')
                AND outcome IN ('success', 'denied', 'failure'));
