-- operator_claim does less while it holds the claim lock.
--
-- Claims are serialised by a transaction-level advisory lock (0008), so the time a claim holds
-- it bounds the queue's throughput. Two changes shorten that time; what a claim takes, and the
-- limits and fairness it keeps, are as in 0010:
--
-- 1. The loose index scan that finds the orgs with ready jobs (and each one's first ready job)
--    runs before the lock is taken. It is the part of a claim that walks over the index entries
--    earlier claims left behind until a vacuum, and it reads no counts, so it needs no lock:
--    a claim's walk now overlaps the previous claim's work. The org's counts, and so its free
--    slots, are still read under the lock. An org whose first job became ready meanwhile is seen
--    by the next claim; a job the previous claim took meanwhile is skipped by the picks (they
--    start at the job the scan found and lock with SKIP LOCKED, and read state under the lock).
--    A call that finds nothing ready no longer takes the lock at all. A second pass (when an
--    org had fewer ready jobs than its share) scans again, under the lock, as before.
-- 2. The picked rows are updated through their ctid (a TID scan) instead of a join through the
--    primary key: the picks lock exactly those row versions, so the update needs no second
--    index descent per job. (A row version that a transaction committed after this claim's
--    snapshot is not visible to the update: such a row stays queued for the next claim.)
--
-- Measured alone (pgbench, one client, claim 256 jobs over 10 orgs and delete them), a claim
-- took 3.0-3.5 ms with the TID update against 4.0-4.1 ms with the join. Under the operator, in
-- the queue benchmark's setting, the claim lock was held 3.8 ms per claim instead of 4.8, and
-- one operator process completed 46-49k no-op jobs/s against 42-46k (same sitting).
CREATE OR REPLACE FUNCTION operator_claim(p_worker uuid, p_max integer, p_lease_ms integer, p_default_limit integer)
RETURNS TABLE (job_id bigint, org_id uuid, kind text, run_id uuid, step_id text, attempt integer,
               enqueued_at timestamptz, expired integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired integer := 0;
    v_left integer := p_max;
    v_locked boolean := false;
    -- the orgs with ready jobs, each with its first ready job (the loose index scan)
    r_orgs uuid[];
    r_at timestamptz[];
    r_id bigint[];
    -- those with free slots, in claiming order, with their free slots and first ready job
    v_orgs uuid[];
    v_free integer[];
    v_at timestamptz[];
    v_id bigint[];
    v_take integer[];
    v_second uuid[];
    v_n integer;
    v_asked integer;
    v_got integer;
    v_rest integer;
    i integer;
BEGIN
    -- Leases that expired go back to the queue (the lease index holds few entries before
    -- now()). A call that took some back claims nothing: the worker calls again at once. That
    -- keeps this transaction's locks on org_job_counts to one statement, in org order.
    IF EXISTS (SELECT 1 FROM jobs x WHERE x.state = 'running' AND x.lease_until < now()) THEN
        WITH e AS (
            UPDATE jobs j SET state = 'queued', lease_owner = NULL, lease_until = NULL
             WHERE j.id IN (SELECT x.id FROM jobs x WHERE x.state = 'running' AND x.lease_until < now()
                             ORDER BY x.lease_until LIMIT 10000 FOR UPDATE SKIP LOCKED)
            RETURNING j.id
        ) SELECT count(*) INTO v_expired FROM e;
    END IF;
    IF v_expired > 0 THEN
        RETURN QUERY SELECT NULL::bigint, NULL::uuid, NULL::text, NULL::uuid, NULL::text,
                            NULL::integer, NULL::timestamptz, v_expired;
        RETURN;
    END IF;

    LOOP
        -- The orgs with ready jobs, each with its first ready job: a loose index scan, one probe
        -- per org. The picks below start at that job, so they don't step again over the dead
        -- entries that claims leave at the front of each org's range until a vacuum. The first
        -- pass runs it before taking the lock (see above).
        WITH RECURSIVE ready(org, at, id) AS (
            (SELECT q.org_id, q.run_at, q.id FROM jobs q WHERE q.state = 'queued' AND q.run_at <= now()
              ORDER BY q.org_id, q.run_at, q.id LIMIT 1)
            UNION ALL
            SELECT n.org_id, n.run_at, n.id FROM ready, LATERAL (
                SELECT q.org_id, q.run_at, q.id FROM jobs q
                 WHERE q.state = 'queued' AND q.run_at <= now() AND q.org_id > ready.org
                 ORDER BY q.org_id, q.run_at, q.id LIMIT 1) n
        )
        SELECT array_agg(ready.org), array_agg(ready.at), array_agg(ready.id)
          INTO r_orgs, r_at, r_id
          FROM ready
         -- a second pass stays within the orgs the first one claimed from (below)
         WHERE v_second IS NULL OR ready.org = ANY (v_second);
        EXIT WHEN r_orgs IS NULL;
        IF NOT v_locked THEN
            PERFORM pg_advisory_xact_lock(727001);
            v_locked := true;
        END IF;
        -- Free slots, read under the lock; orgs in order of their share of running slots.
        SELECT array_agg(slots.org ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.lim - slots.running ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.at ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.id ORDER BY slots.running::float8 / slots.lim, slots.org)
          INTO v_orgs, v_free, v_at, v_id
          FROM (SELECT r.org, r.at, r.id,
                       coalesce(c.running, 0) AS running,
                       coalesce(s.max_concurrency, p_default_limit) AS lim
                  FROM unnest(r_orgs, r_at, r_id) AS r(org, at, id)
                  LEFT JOIN org_job_counts c ON c.org_id = r.org
                  LEFT JOIN org_operator_settings s ON s.org_id = r.org) slots
         WHERE slots.lim > slots.running;
        v_n := coalesce(array_length(v_orgs, 1), 0);
        EXIT WHEN v_n = 0;
        -- Equal shares of what is left, rounded up, each within the org's free slots.
        v_take := ARRAY[]::integer[];
        v_rest := v_left;
        FOR i IN 1 .. v_n LOOP
            v_take := v_take || least(v_free[i], (v_rest + (v_n - i)) / (v_n - i + 1));
            v_rest := v_rest - v_take[i];
        END LOOP;
        v_asked := v_left - v_rest;
        RETURN QUERY
        WITH picked AS (
            SELECT k.ctid FROM unnest(v_orgs, v_take, v_at, v_id) AS p(org, take, at, id)
             CROSS JOIN LATERAL (
                SELECT q.ctid FROM jobs q
                 WHERE q.org_id = p.org AND q.state = 'queued' AND q.run_at <= now()
                   AND (q.run_at, q.id) >= (p.at, p.id)
                 ORDER BY q.run_at, q.id
                 LIMIT p.take
                 FOR UPDATE SKIP LOCKED) k
        ), claimed AS (
            UPDATE jobs j SET state = 'running', lease_owner = p_worker,
                              lease_until = now() + make_interval(secs => p_lease_ms / 1000.0)
             WHERE j.ctid = ANY (ARRAY(SELECT picked.ctid FROM picked))
            RETURNING j.id, j.org_id, j.kind, j.run_id, j.step_id, j.attempt, j.enqueued_at
        )
        SELECT c.id, c.org_id, c.kind, c.run_id, c.step_id, c.attempt, c.enqueued_at, 0
          FROM claimed c;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_left := v_left - v_got;
        -- Another pass only when an org had fewer ready jobs than its share.
        EXIT WHEN v_left <= 0 OR v_got = 0 OR v_got >= v_asked OR v_second IS NOT NULL;
        -- It shares the rest out among the orgs this one claimed from: the rows of
        -- org_job_counts that this transaction has updated (and so holds locked). No other
        -- org's row is locked later, out of org order.
        v_second := ARRAY(SELECT c.org_id FROM org_job_counts c
                          WHERE c.org_id = ANY (v_orgs) AND c.xmin = pg_current_xact_id()::xid);
    END LOOP;
END
$$;

-- CREATE OR REPLACE drops a function's settings: set again those 0008 gave it (0014 let it
-- keep its plans per connection).
ALTER FUNCTION operator_claim(uuid, integer, integer, integer) SET enable_seqscan = off;
ALTER FUNCTION operator_claim(uuid, integer, integer, integer) SET enable_hashjoin = off;
ALTER FUNCTION operator_claim(uuid, integer, integer, integer) SET enable_mergejoin = off;
