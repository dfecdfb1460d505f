-- Appending audit events at commit.
--
-- The writer used to lock its chain's head, compute the event's hash in the app, then insert
-- the event and move the head: the head stayed locked across three round trips (the two
-- statements and the commit), which is what serialised one org's writers — and on a busy
-- machine each round trip waits for the client to be scheduled.
--
-- Now the writer inserts the event, without its chain fields, into `audit_pending` in the
-- same transaction as the change. A deferred constraint trigger appends it to its chain when
-- the transaction commits: the head is locked from there to the end of the commit, inside
-- the server, with no round trip in between. Chains are in commit order, and
-- a transaction that rolls back leaves neither its change nor its event. `audit_pending` is
-- UNLOGGED and empty outside a committing transaction: its rows never outlive it.
--
-- The app sends the event's canonical JSON without its two chain fields — the bytes before
-- `prev_hash`'s value, between it and `seq`'s value, and after — and the trigger
-- (`audit_pending_append`) fills them in under the lock.
--
-- The hash is still SHA-256 over the canonical JSON of the whole event including `prev_hash`
-- and `seq` (docs/audit.md); verification recomputes it in Rust from the stored fields, so a
-- split that disagreed with the canonical form would be caught by every verify, and a unit
-- test pins the split against the generic canonical encoder.

CREATE UNLOGGED TABLE audit_pending (
    id           uuid PRIMARY KEY,
    chain_id     uuid NOT NULL,
    org_id       uuid,
    occurred_at  timestamptz NOT NULL,
    actor_type   text NOT NULL,
    actor_id     text,
    actor_name   text,
    auth_method  text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    outcome      text NOT NULL,
    request_id   text,
    client_addr  text,
    user_agent   text,
    detail       jsonb NOT NULL,
    before_prev  bytea NOT NULL,
    before_seq   bytea NOT NULL,
    after_seq    bytea NOT NULL
);
COMMENT ON TABLE audit_pending IS 'events of transactions not yet committed; appended to their chains (and removed) by a deferred trigger at commit';
COMMENT ON COLUMN audit_pending.before_prev IS 'canonical JSON of the event up to the value of prev_hash (see audit_pending_append)';

-- Appends a pending event to its chain (at commit; row-level security applies: the
-- committing role's privileges) and removes it from `audit_pending`.
CREATE FUNCTION audit_pending_append() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_seq  bigint;
    v_prev text;
    v_hash text;
BEGIN
    SELECT seq, hash INTO v_seq, v_prev FROM audit_heads WHERE chain_id = NEW.chain_id FOR UPDATE;
    IF NOT FOUND THEN
        -- A chain's first event: create its head (a racing first writer may win; then lock
        -- theirs).
        INSERT INTO audit_heads (chain_id, seq, hash)
        VALUES (NEW.chain_id, 0, repeat('0', 64))
        ON CONFLICT (chain_id) DO NOTHING;
        SELECT seq, hash INTO STRICT v_seq, v_prev
          FROM audit_heads WHERE chain_id = NEW.chain_id FOR UPDATE;
    END IF;
    v_seq := v_seq + 1;
    -- The hash is hex and the seq digits: neither needs escaping in canonical JSON.
    v_hash := encode(sha256(NEW.before_prev || convert_to(v_prev, 'UTF8') || NEW.before_seq
                            || convert_to(v_seq::text, 'UTF8') || NEW.after_seq), 'hex');
    INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, actor_id, actor_name,
        auth_method, action, target_type, target_id, outcome, request_id, client_addr,
        user_agent, detail, prev_hash, hash)
    VALUES (NEW.id, NEW.org_id, v_seq, NEW.occurred_at, NEW.actor_type, NEW.actor_id,
        NEW.actor_name, NEW.auth_method, NEW.action, NEW.target_type, NEW.target_id,
        NEW.outcome, NEW.request_id, NEW.client_addr, NEW.user_agent, NEW.detail, v_prev,
        v_hash);
    UPDATE audit_heads SET seq = v_seq, hash = v_hash WHERE chain_id = NEW.chain_id;
    DELETE FROM audit_pending WHERE id = NEW.id;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION audit_pending_append FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_pending_append TO builderos_app, builderos_maintenance;
CREATE CONSTRAINT TRIGGER audit_pending_append AFTER INSERT ON audit_pending
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_pending_append();

ALTER TABLE audit_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_pending FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_pending_tenant ON audit_pending
    USING (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid))
    WITH CHECK (chain_id = coalesce(app_org_id(), '00000000-0000-0000-0000-000000000000'::uuid)
                AND (org_id IS NULL OR org_id = app_org_id()));
CREATE POLICY audit_pending_maintenance ON audit_pending TO builderos_maintenance
    USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON audit_pending TO builderos_app, builderos_maintenance;

-- One index keeps each chain gapless and serves newest-first pages (scanned backwards): the
-- expression index on coalesce(org_id, nil) and the plain (org_id, seq DESC) index did the
-- same work twice on every append.
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (org_id, seq) NULLS NOT DISTINCT;
DROP INDEX audit_events_chain_key;
DROP INDEX audit_events_org_seq_idx;
