-- The audit journal: an event commits with its change, and joins its chain just after.
--
-- Since 0009 a deferred trigger appended each event to its chain inside the committing
-- transaction: lock the org's head, insert the event with its seven indexes, move the head.
-- That work sat in every audited request — and with the head locked, one org's commits queued
-- behind each other's. It was most of the audit write's cost (docs/audit.md, "Cost").
--
-- Now the writer inserts the event, with everything but its chain fields, into `audit_journal`
-- in the transaction of the change: the event is durable exactly when the change is, and a
-- rollback drops both. Sealing assigns the chain fields later, in batches: `audit_seal` locks
-- the heads of the chains it seals, takes their journal rows in order, gives each the next
-- `seq`, chains its hash to the one before, inserts the sealed events, removes them from the
-- journal and moves the heads — in one statement, so an event is in exactly one of the two
-- tables. Every API replica runs a sealer (crates/api/src/audit/sealer.rs) that seals its
-- own writes about 100 ms after them and polls for others' every second; every read of the trail
-- (query, export, verify, retention) first seals the org it reads, so readers never see a
-- trail without the changes already committed.
--
-- Chains are still gapless and one per org: a chain is sealed by one transaction at a time
-- (its head row is locked; a background sealer skips chains another sealer holds). The hash is
-- unchanged: SHA-256 over the event's canonical JSON including `prev_hash` and `seq`, of which
-- the app sends the bytes around the two chain fields as before.
--
-- The app's role may only INSERT into the journal: it can't read, change or remove an event
-- waiting there, and it no longer writes `audit_heads` or `audit_events` at all (it reads
-- them). `audit_seal` is SECURITY DEFINER: it runs as the schema owner, a member of
-- `builderos_maintenance`.

CREATE TABLE audit_journal (
    id           uuid NOT NULL,
    chain_id     uuid NOT NULL,
    org_id       uuid,
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
    detail       jsonb NOT NULL,
    before_prev  bytea NOT NULL,
    before_seq   bytea NOT NULL,
    after_seq    bytea NOT NULL,
    -- Whatever the journal accepts, sealing can store: the same checks as `audit_events`, and
    -- an event's chain is its org's (or the platform's).
    CHECK (chain_id = coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid))
)
-- A queue: rows live for milliseconds. No index (the sealer reads it whole, and an index
-- would cost every audited request); vacuumed often so its scans stay short.
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
      autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 2000);
COMMENT ON TABLE audit_journal IS 'committed audit events not yet sealed into their chain (audit_events) by audit_seal';
COMMENT ON COLUMN audit_journal.before_prev IS 'canonical JSON of the event up to the value of prev_hash; before_seq runs from there to the value of seq, after_seq from there to the end';

ALTER TABLE audit_journal ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_journal FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_journal_tenant ON audit_journal FOR INSERT
    WITH CHECK (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid)
                AND (org_id IS NULL OR org_id = app_org_id()));
CREATE POLICY audit_journal_maintenance ON audit_journal TO builderos_maintenance
    USING (true) WITH CHECK (true);
GRANT INSERT ON audit_journal TO builderos_app;
GRANT SELECT ON audit_journal TO builderos_maintenance;

-- One step of a chain: the hash of the event whose canonical JSON is `before_prev`, the
-- previous hash (`state`, or `head` for the first event sealed in a batch), `before_seq`, the
-- seq and `after_seq`. As the window aggregate `audit_chain`, it hashes a batch in seq order.
-- The hash is hex and the seq digits: neither needs escaping in canonical JSON.
CREATE FUNCTION audit_chain_step(state text, head text, before_prev bytea, before_seq bytea,
                                 seq bigint, after_seq bytea) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN encode(sha256(before_prev || convert_to(coalesce(state, head), 'UTF8') || before_seq
                     || convert_to(seq::text, 'UTF8') || after_seq), 'hex');
CREATE AGGREGATE audit_chain(text, bytea, bytea, bigint, bytea) (
    SFUNC = audit_chain_step,
    STYPE = text
);

-- Seals journaled events into their chains: `p_chain`'s (waiting for a sealer that holds it),
-- or with NULL every chain no other sealer holds; everything those chains have waiting.
-- Returns how many events it sealed.
CREATE FUNCTION audit_seal(p_chain uuid) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
-- pg_temp last: a caller's temporary tables must never stand in for these.
SET search_path = pg_catalog, public, pg_temp
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
    -- A chain's first event: its head starts at the genesis (seq 0, hash of zeros). Inserted
    -- in chain order, so two sealers starting the same new chains never wait on each other
    -- in a cycle.
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
    -- One statement, after the locks (a fresh snapshot: what an earlier holder sealed is
    -- gone): take the chains' journal rows, number them after their heads in id order (ids
    -- are time-ordered), chain their hashes, insert them sealed, move the heads.
    BEGIN
        WITH taken AS (
            DELETE FROM audit_journal WHERE chain_id = ANY (v_locked) RETURNING *
        ), numbered AS (
            SELECT t.*, h.hash AS head_hash,
                   h.seq + row_number() OVER (PARTITION BY t.chain_id ORDER BY t.id) AS new_seq
              FROM taken t JOIN audit_heads h ON h.chain_id = t.chain_id
        ), chained AS (
            SELECT n.*,
                   audit_chain(n.head_hash, n.before_prev, n.before_seq, n.new_seq, n.after_seq)
                       OVER (PARTITION BY n.chain_id ORDER BY n.new_seq) AS new_hash
              FROM numbered n
        ), sealed AS (
            INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, actor_id, actor_name,
                auth_method, action, target_type, target_id, outcome, request_id, client_addr,
                user_agent, detail, prev_hash, hash)
            SELECT c.id, c.org_id, c.new_seq, c.occurred_at, c.actor_type, c.actor_id, c.actor_name,
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
    EXCEPTION WHEN unique_violation OR check_violation OR not_null_violation THEN
        -- A row that can't be sealed (only a forged one can: a duplicate id, or an event
        -- put in the chain by other means) must not hold back other chains: seal them one
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
REVOKE ALL ON FUNCTION audit_seal FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_chain_step FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_chain(text, bytea, bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_seal TO builderos_app, builderos_maintenance;

-- The commit-time append is gone; so is its table (unlogged, and empty outside a committing
-- transaction, so nothing is lost here).
DROP TABLE audit_pending;
DROP FUNCTION audit_pending_append();

-- Heads are moved, and events put in their chains, by sealing (as the owner) and retention
-- (as maintenance) only: the app reads the trail and adds to the journal, nothing else.
REVOKE INSERT, UPDATE ON audit_heads FROM builderos_app;
REVOKE INSERT ON audit_events FROM builderos_app;
