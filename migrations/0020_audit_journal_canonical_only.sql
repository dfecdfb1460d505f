-- The journal takes an event as its canonical JSON only; sealing reads the fields from it.
--
-- Since 0012 the writer sent every event twice: its fields as fifteen columns, and its canonical
-- JSON (split around `prev_hash` and `seq`) for the hash. Each value is work in the request —
-- encoded by the app, received and checked by PostgreSQL, stored in the journal row, and sent
-- back out by sealing's delete. Measured with pgbench (8 clients, a project rename plus the
-- journal insert in one statement, 4 s rounds, five alternations): 232-278 µs of machine time
-- per transaction with the nineteen values, 212-229 µs with four (the chain and the three parts
-- of the canonical JSON), 169-199 µs with no audit write at all.
--
-- Now the writer sends `chain_id` and the canonical split, and sealing parses the joined JSON
-- once per event (`jsonb_to_record`) to fill the columns of `audit_events`: measured alone,
-- sealing batches of 200 events took 45-62 µs per event against 40-54 µs before (eight
-- alternations; the parse alone is 10 µs). The stored fields are now exactly the ones hashed:
-- a journal row can no longer carry columns that say something other than its hash.
--
-- What the insert policy checked of the columns (0017), sealing checks of the parsed event: an
-- event whose org is not its chain's is refused (`audit_refuse`, a check violation), and
-- `audit_events` keeps its checks and NOT NULLs; bytes that are not a JSON object of those
-- fields fail as data exceptions (nested too deep for the parser, as a program limit). Either
-- way the event's own chain stops, with a warning, and every other chain is sealed (0012's
-- fallback, now also for those errors). The policy still confines the app to its own chain.
-- The app never writes such a row: it builds the JSON itself, without NULs (which jsonb can't
-- hold) and with detail capped at 8 KiB.
--
-- Expand, then contract: builds before this one still insert the old columns during a rolling
-- deploy, so they stay, nullable and ignored; their canonical split is the same as ever and is
-- sealed the same way. A later migration drops them.

ALTER TABLE audit_journal
    ALTER COLUMN id DROP NOT NULL,
    ALTER COLUMN occurred_at DROP NOT NULL,
    ALTER COLUMN actor_type DROP NOT NULL,
    ALTER COLUMN action DROP NOT NULL,
    ALTER COLUMN outcome DROP NOT NULL,
    ALTER COLUMN detail DROP NOT NULL;
COMMENT ON TABLE audit_journal IS 'committed audit events not yet sealed into their chain (audit_events) by audit_seal: the chain and the canonical JSON; the other columns are written by builds before migration 0020 only, and ignored';

ALTER POLICY audit_journal_tenant ON audit_journal
    WITH CHECK (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid));

-- Stops sealing with a check violation saying why.
CREATE FUNCTION audit_refuse(p_why text) RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = p_why;
END
$$;
REVOKE ALL ON FUNCTION audit_refuse FROM PUBLIC;

-- As in 0012, with the event's fields parsed from its canonical JSON. The JSON is joined with
-- an empty `prev_hash` (the split already holds its quotes) and `seq` 0: neither is read.
CREATE OR REPLACE FUNCTION audit_seal(p_chain uuid) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
-- pg_temp last: a caller's temporary tables must never stand in for these.
SET search_path = pg_catalog, public, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_chains uuid[];
    v_locked uuid[];
    v_chain  uuid;
    v_sealed integer;
BEGIN
    SELECT array_agg(DISTINCT chain_id ORDER BY chain_id) INTO v_chains
      FROM audit_journal WHERE p_chain IS NULL OR chain_id = p_chain;
    IF v_chains IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO audit_heads (chain_id, seq, hash)
    SELECT c, 0, repeat('0', 64) FROM unnest(v_chains) AS c
    ON CONFLICT (chain_id) DO NOTHING;
    IF p_chain IS NULL THEN
        SELECT array_agg(chain_id) INTO v_locked FROM (
            SELECT chain_id FROM audit_heads WHERE chain_id = ANY (v_chains)
             ORDER BY chain_id FOR UPDATE SKIP LOCKED) AS l;
    ELSE
        SELECT array_agg(chain_id) INTO v_locked FROM (
            SELECT chain_id FROM audit_heads WHERE chain_id = p_chain FOR UPDATE) AS l;
    END IF;
    IF v_locked IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        WITH taken AS (
            DELETE FROM audit_journal WHERE chain_id = ANY (v_locked)
            RETURNING chain_id, before_prev, before_seq, after_seq
        ), parsed AS (
            SELECT t.*, e.*
              FROM taken t,
                   jsonb_to_record(convert_from(t.before_prev || t.before_seq || '\x30'::bytea
                                                || t.after_seq, 'UTF8')::jsonb)
                       AS e(id uuid, org_id uuid, occurred_at timestamptz, actor_type text,
                            actor_id text, actor_name text, auth_method text, action text,
                            target_type text, target_id text, outcome text, request_id text,
                            client_addr text, user_agent text, detail jsonb)
        ), numbered AS (
            SELECT p.*, h.hash AS head_hash,
                   h.seq + row_number() OVER (PARTITION BY p.chain_id ORDER BY p.id) AS new_seq
              FROM parsed p JOIN audit_heads h ON h.chain_id = p.chain_id
        ), chained AS (
            SELECT n.*,
                   audit_chain(n.head_hash, n.before_prev, n.before_seq, n.new_seq, n.after_seq)
                       OVER (PARTITION BY n.chain_id ORDER BY n.new_seq) AS new_hash
              FROM numbered n
        ), sealed AS (
            INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, actor_id, actor_name,
                auth_method, action, target_type, target_id, outcome, request_id, client_addr,
                user_agent, detail, prev_hash, hash)
            SELECT c.id,
                   CASE WHEN c.chain_id = coalesce(c.org_id, '00000000-0000-0000-0000-000000000000'::uuid)
                        THEN c.org_id
                        ELSE audit_refuse('an event of org ' || coalesce(c.org_id::text, 'none')
                                          || ' in chain ' || c.chain_id)
                   END,
                   c.new_seq, c.occurred_at, c.actor_type, c.actor_id, c.actor_name,
                   c.auth_method, c.action, c.target_type, c.target_id, c.outcome, c.request_id,
                   c.client_addr, c.user_agent, c.detail,
                   coalesce(lag(c.new_hash) OVER (PARTITION BY c.chain_id ORDER BY c.new_seq),
                            c.head_hash),
                   c.new_hash
              FROM chained c
            RETURNING coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid) AS chain_id,
                      seq, prev_hash, hash
        ), moved AS (
            UPDATE audit_heads h SET seq = l.seq, prev_hash = l.prev_hash, hash = l.hash
              FROM (SELECT DISTINCT ON (chain_id) chain_id, seq, prev_hash, hash
                      FROM sealed ORDER BY chain_id, seq DESC) AS l
             WHERE h.chain_id = l.chain_id
        )
        SELECT count(*) INTO v_sealed FROM sealed;
    EXCEPTION WHEN integrity_constraint_violation OR data_exception OR program_limit_exceeded THEN
        -- A row that can't be sealed (only a forged one can: bytes that aren't an event, an
        -- event of another org, a duplicate id) must not hold back other chains: seal them one
        -- by one. Its own chain stays unsealed, and says why, until someone looks.
        IF cardinality(v_locked) = 1 THEN
            RAISE WARNING 'audit chain % cannot be sealed: %', v_locked[1], SQLERRM;
            RETURN 0;
        END IF;
        v_sealed := 0;
        FOREACH v_chain IN ARRAY v_locked LOOP
            v_sealed := v_sealed + audit_seal(v_chain);  -- locked by this transaction already
        END LOOP;
    END;
    RETURN v_sealed;
END
$$;
