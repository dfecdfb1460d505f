-- Appending an audit event at commit in one statement.
--
-- The 0009 trigger ran four statements per event under the chain's lock: lock the head, insert
-- the event, move the head, remove the pending row. Each statement starts its own executor
-- and takes its own locks, and at commit, with the head locked, that start-up work was most
-- of the append. Now one statement moves the head and inserts the event: the head upsert
-- returns the event's seq, the hash it chains to (kept on the head as `prev_hash` so that
-- `RETURNING` can hand it over) and its new hash, and the insert takes them from there. The
-- first event of a chain inserts its head, seq 1 after the genesis hash; every later one
-- locks the existing head (waiting for a concurrent append to commit) and moves it on.
--
-- The hash is unchanged: SHA-256 over the event's canonical JSON including `prev_hash` and
-- `seq` (docs/audit.md), recomputed in Rust by every verify.

ALTER TABLE audit_heads ADD COLUMN prev_hash text;
COMMENT ON COLUMN audit_heads.prev_hash IS 'the hash the head event chains to (its prev_hash); NULL until the first append after migration 0011';

CREATE OR REPLACE FUNCTION audit_pending_append() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- The hash is hex and the seq digits: neither needs escaping in canonical JSON.
    WITH head AS (
        INSERT INTO audit_heads AS h (chain_id, seq, prev_hash, hash)
        VALUES (NEW.chain_id, 1, repeat('0', 64),
                encode(sha256(NEW.before_prev || convert_to(repeat('0', 64), 'UTF8')
                              || NEW.before_seq || convert_to('1', 'UTF8') || NEW.after_seq), 'hex'))
        ON CONFLICT (chain_id) DO UPDATE
            SET seq = h.seq + 1,
                prev_hash = h.hash,
                hash = encode(sha256(NEW.before_prev || convert_to(h.hash, 'UTF8') || NEW.before_seq
                                     || convert_to((h.seq + 1)::text, 'UTF8') || NEW.after_seq), 'hex')
        RETURNING seq, prev_hash, hash
    )
    INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, actor_id, actor_name,
        auth_method, action, target_type, target_id, outcome, request_id, client_addr,
        user_agent, detail, prev_hash, hash)
    SELECT NEW.id, NEW.org_id, head.seq, NEW.occurred_at, NEW.actor_type, NEW.actor_id,
        NEW.actor_name, NEW.auth_method, NEW.action, NEW.target_type, NEW.target_id,
        NEW.outcome, NEW.request_id, NEW.client_addr, NEW.user_agent, NEW.detail,
        head.prev_hash, head.hash
      FROM head;
    DELETE FROM audit_pending WHERE id = NEW.id;
    RETURN NULL;
END
$$;
