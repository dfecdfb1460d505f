-- The queue's claim, made cheaper (see docs/pipelines.md, "The queue"):
--
-- * Running jobs are counted per org in org_job_counts, kept by triggers on jobs, instead of
--   being counted from an index at every claim. Running jobs finish by being deleted, so an
--   index of them is mostly entries of deleted rows that every count had to visit.
-- * The claim takes every org's share in one statement, starting each org's pick at the first
--   ready job its org probe found, so the dead entries that claims leave at the front of each
--   org's range (until a vacuum) are stepped over once per claim, not twice.
-- * A claimed job's row gets entries in two indexes instead of four: jobs_running_idx is gone
--   (org_job_counts replaces it) and jobs_run_idx holds queued jobs only (the one lookup by
--   run deletes a run's queued jobs).
-- * operator_started finds a batch's steps with one lookup per job (it looked up every run
--   of the batch for each job).
-- * operator_complete deletes its batch's jobs in one last statement, so that it locks
--   org_job_counts rows once, in org order, like the claim: the two never deadlock.

CREATE TABLE org_job_counts (
    org_id   uuid PRIMARY KEY,
    running  integer NOT NULL CHECK (running >= 0)
);
COMMENT ON TABLE org_job_counts IS
    'Jobs in state running per org, kept by the jobs_count_* triggers; read by operator_claim.';
-- Updated by every claim and every completion batch: room on each page keeps that HOT.
ALTER TABLE org_job_counts SET (fillfactor = 50);
ALTER TABLE org_job_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE org_job_counts FORCE ROW LEVEL SECURITY;
CREATE POLICY org_job_counts_tenant ON org_job_counts
    USING (org_id = app_org_id() OR app_operator())
    WITH CHECK (org_id = app_org_id() OR app_operator());
GRANT SELECT, INSERT, UPDATE ON org_job_counts TO builderos_app;

-- Statement-level, with transition tables: one call per statement whatever its size, and
-- nothing to write for the statements that don't change which jobs are running (enqueues,
-- heartbeats, deletes of queued jobs). The rows of org_job_counts are updated through the
-- primary key with `= ANY (array)`, which visits (and locks) them in org order: every writer
-- does, and each transaction that changes running jobs does so in one statement, so none
-- deadlock.
CREATE FUNCTION jobs_count_running() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_org uuid[];
    v_delta integer[];
    v_done uuid[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE org_job_counts SET running = 0 WHERE running <> 0;
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(d.org_id), array_agg(d.n) INTO v_org, v_delta
          FROM (SELECT n.org_id, count(*)::integer AS n FROM new_rows n
                 WHERE n.state = 'running' GROUP BY n.org_id) d;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(d.org_id), array_agg(-d.n) INTO v_org, v_delta
          FROM (SELECT o.org_id, count(*)::integer AS n FROM old_rows o
                 WHERE o.state = 'running' GROUP BY o.org_id) d;
    ELSE
        SELECT array_agg(d.org_id), array_agg(d.n) INTO v_org, v_delta
          FROM (SELECT x.org_id, sum(x.n)::integer AS n
                  FROM (SELECT n.org_id, 1 AS n FROM new_rows n WHERE n.state = 'running'
                        UNION ALL
                        SELECT o.org_id, -1 FROM old_rows o WHERE o.state = 'running') x
                 GROUP BY x.org_id) d
         WHERE d.n <> 0;
    END IF;
    IF v_org IS NULL THEN
        RETURN NULL;
    END IF;
    WITH u AS (
        UPDATE org_job_counts c SET running = c.running + v_delta[array_position(v_org, c.org_id)]
         WHERE c.org_id = ANY (v_org)
        RETURNING c.org_id
    ) SELECT array_agg(u.org_id) INTO v_done FROM u;
    IF coalesce(array_length(v_done, 1), 0) < array_length(v_org, 1) THEN
        -- An org's first running jobs make its row (0010 made those of older orgs). Another
        -- transaction may have made it since the update above looked: then this adds to it.
        INSERT INTO org_job_counts AS c (org_id, running)
        SELECT u.org, u.delta FROM unnest(v_org, v_delta) AS u(org, delta)
         WHERE NOT u.org = ANY (coalesce(v_done, '{}'))
         ORDER BY u.org
        ON CONFLICT (org_id) DO UPDATE SET running = c.running + excluded.running;
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION jobs_count_running() SET enable_seqscan = off;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_running();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_running();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_running();
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_running();

DROP INDEX jobs_running_idx;
DROP INDEX jobs_run_idx;
CREATE INDEX jobs_run_idx ON jobs (run_id) WHERE state = 'queued';

-- Counts of the jobs running now. The triggers above already hold a lock on jobs that keeps
-- claims out until this migration commits; the operator's setting lets this transaction see
-- every org's jobs through row-level security.
SELECT set_config('app.operator', 'on', true);
INSERT INTO org_job_counts (org_id, running)
SELECT o.id, coalesce(r.n, 0)
  FROM (SELECT id FROM orgs UNION SELECT DISTINCT org_id FROM jobs) o
  LEFT JOIN (SELECT org_id, count(*)::integer AS n FROM jobs WHERE state = 'running' GROUP BY org_id) r
    ON r.org_id = o.id;


-- Claim ------------------------------------------------------------------------------------
--
-- Takes back expired leases, or else claims up to p_max ready jobs for p_worker, fairly across
-- orgs: orgs are served in order of their share of running slots (running / limit), each gets
-- at most an equal share of what is left of the batch and never more than its free slots; when
-- an org has fewer ready jobs than its share, a second pass shares out the rest. Claims are
-- serialised by a transaction-level advisory lock so per-org limits hold exactly across
-- operator processes; the job rows themselves are taken with FOR UPDATE SKIP LOCKED. A worker
-- keeps a second claim waiting on that lock, so claims follow each other without a gap.
CREATE OR REPLACE FUNCTION operator_claim(p_worker uuid, p_max integer, p_lease_ms integer, p_default_limit integer)
RETURNS TABLE (job_id bigint, org_id uuid, kind text, run_id uuid, step_id text, attempt integer,
               enqueued_at timestamptz, expired integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired integer := 0;
    v_left integer := p_max;
    v_orgs uuid[];
    v_free integer[];
    v_take integer[];
    v_at timestamptz[];
    v_id bigint[];
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

    PERFORM pg_advisory_xact_lock(727001);

    LOOP
        -- The orgs with ready jobs, each with its first ready job: a loose index scan, one probe
        -- per org. The picks below start at that job, so they don't step again over the dead
        -- entries that claims leave at the front of each org's range until a vacuum.
        WITH RECURSIVE ready(org, at, id) AS (
            (SELECT q.org_id, q.run_at, q.id FROM jobs q WHERE q.state = 'queued' AND q.run_at <= now()
              ORDER BY q.org_id, q.run_at, q.id LIMIT 1)
            UNION ALL
            SELECT n.org_id, n.run_at, n.id FROM ready, LATERAL (
                SELECT q.org_id, q.run_at, q.id FROM jobs q
                 WHERE q.state = 'queued' AND q.run_at <= now() AND q.org_id > ready.org
                 ORDER BY q.org_id, q.run_at, q.id LIMIT 1) n
        ), slots AS (
            SELECT ready.org, ready.at, ready.id,
                   coalesce(c.running, 0) AS running,
                   coalesce(s.max_concurrency, p_default_limit) AS lim
              FROM ready
              LEFT JOIN org_job_counts c ON c.org_id = ready.org
              LEFT JOIN org_operator_settings s ON s.org_id = ready.org
        )
        SELECT array_agg(slots.org ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.lim - slots.running ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.at ORDER BY slots.running::float8 / slots.lim, slots.org),
               array_agg(slots.id ORDER BY slots.running::float8 / slots.lim, slots.org)
          INTO v_orgs, v_free, v_at, v_id
          FROM slots
         WHERE slots.lim > slots.running
           -- a second pass stays within the orgs the first one claimed from (below)
           AND (v_second IS NULL OR slots.org = ANY (v_second));
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
            SELECT k.id FROM unnest(v_orgs, v_take, v_at, v_id) AS p(org, take, at, id)
             CROSS JOIN LATERAL (
                SELECT q.id FROM jobs q
                 WHERE q.org_id = p.org AND q.state = 'queued' AND q.run_at <= now()
                   AND (q.run_at, q.id) >= (p.at, p.id)
                 ORDER BY q.run_at, q.id
                 LIMIT p.take
                 FOR UPDATE SKIP LOCKED) k
        ), claimed AS (
            UPDATE jobs j SET state = 'running', lease_owner = p_worker,
                              lease_until = now() + make_interval(secs => p_lease_ms / 1000.0)
              FROM picked WHERE j.id = picked.id
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


-- Complete: as in 0008, with the batch's jobs deleted in its last statement.
CREATE OR REPLACE FUNCTION operator_complete(p_worker uuid, p_items jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    it jsonb;
    v_run uuid;
    v_step text;
    v_attempt integer;
    v_org uuid;
    v_state text;
    v_ready text[];
    v_recorded integer := 0;
    v_n integer;
    v_mine text[];
    v_runs uuid[];
    v_active uuid[];
    -- the batch's successes recorded set-based, as parallel arrays
    a_job bigint[];
    a_run uuid[];
    a_org uuid[];
    a_step text[];
    a_attempt integer[];
    a_exec text[];
    a_outputs jsonb[];
    a_deps jsonb[];
    a_artifacts jsonb[];
    a_receipt jsonb[];
    a_started timestamptz[];
    a_finished timestamptz[];
    -- the jobs to delete, all in the last statement (see org_job_counts above)
    v_noops bigint[];
    v_done bigint[];
    v_deleted integer;
BEGIN
    -- No-op jobs: deleting the row (at the end) is the record; a second completion deletes
    -- nothing.
    v_noops := ARRAY(SELECT (e->>'job')::bigint FROM jsonb_array_elements(p_items) e
                      WHERE (e->>'noop')::boolean);
    v_done := v_noops;

    -- Lock the batch's runs; note which are still active.
    v_runs := ARRAY(SELECT DISTINCT (e->>'run')::uuid FROM jsonb_array_elements(p_items) e
                     WHERE e->>'run' IS NOT NULL);
    SELECT array_agg(r.id) FILTER (WHERE r.state IN ('queued', 'running')) INTO v_active
      FROM (SELECT q.id, q.state FROM runs q WHERE q.id = ANY (v_runs) ORDER BY q.id FOR UPDATE) r;

    -- Successes of active runs.
    -- (items carry their org; one without it is looked up)
    SELECT array_agg(x.job), array_agg(x.run),
           array_agg(coalesce(x.org, (SELECT r.org_id FROM runs r WHERE r.id = x.run))),
           array_agg(x.step),
           array_agg(x.attempt), array_agg(x.execution_id), array_agg(x.outputs),
           array_agg(coalesce(x.dependents, '[]')), array_agg(coalesce(x.artifacts, '[]')),
           array_agg(x.receipt), array_agg(x.started_at), array_agg(x.finished_at)
      INTO a_job, a_run, a_org, a_step, a_attempt, a_exec, a_outputs, a_deps, a_artifacts,
           a_receipt, a_started, a_finished
      FROM jsonb_to_recordset(p_items) AS x(
            job bigint, run uuid, org uuid, step text, attempt integer, execution_id text,
            status text, outputs jsonb, dependents jsonb, artifacts jsonb, noop boolean,
            receipt jsonb, started_at timestamptz, finished_at timestamptz)
     WHERE x.noop IS NOT TRUE AND x.status = 'succeeded'
       AND x.run = ANY (coalesce(v_active, '{}'));
    v_n := coalesce(array_length(a_job, 1), 0);
    IF v_n > 0 THEN
        WITH ins AS (
            INSERT INTO step_attempts (run_id, org_id, step_id, attempt, execution_id, worker,
                                       status, receipt, started_at, finished_at)
            SELECT u.run, u.org, u.step, u.attempt, u.exec, p_worker, 'succeeded',
                   u.receipt, u.started_at, u.finished_at
              FROM unnest(a_run, a_org, a_step, a_attempt, a_exec, a_receipt, a_started, a_finished)
                     AS u(run, org, step, attempt, exec, receipt, started_at, finished_at)
            ON CONFLICT DO NOTHING
            RETURNING execution_id
        ) SELECT array_agg(ins.execution_id) INTO v_mine FROM ins;
        IF coalesce(array_length(v_mine, 1), 0) < v_n THEN
            -- Some were recorded before (by another worker after a lease expired, or by this
            -- very batch sent again after a lost reply): go on with what this call recorded.
            SELECT array_agg(u.job), array_agg(u.run), array_agg(u.org), array_agg(u.step),
                   array_agg(u.attempt), array_agg(u.exec), array_agg(u.outputs),
                   array_agg(u.deps), array_agg(u.arts)
              INTO a_job, a_run, a_org, a_step, a_attempt, a_exec, a_outputs, a_deps, a_artifacts
              FROM unnest(a_job, a_run, a_org, a_step, a_attempt, a_exec, a_outputs, a_deps, a_artifacts)
                   AS u(job, run, org, step, attempt, exec, outputs, deps, arts)
             WHERE u.exec = ANY (coalesce(v_mine, '{}'));
        END IF;
        v_n := coalesce(array_length(a_job, 1), 0);
        v_recorded := v_recorded + v_n;
    END IF;
    IF v_n > 0 THEN
        v_done := v_done || a_job;
        INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size)
        SELECT u.run, u.org, a->>'path', u.step, u.attempt, a->>'sha256', (a->>'size')::bigint
          FROM unnest(a_run, a_org, a_step, a_attempt, a_artifacts) AS u(run, org, step, attempt, arts),
               jsonb_array_elements(u.arts) a
        ON CONFLICT (run_id, path) DO NOTHING;
        UPDATE run_steps s SET status = 'succeeded', attempts = u.attempt, finished_at = now(),
               outputs = u.outputs, error_code = NULL, error_message = NULL
          FROM unnest(a_run, a_step, a_attempt, a_outputs) AS u(run, step, attempt, outputs)
         WHERE s.run_id = u.run AND s.step_id = u.step;
        INSERT INTO run_events (org_id, run_id, kind, step_id, attempt)
        SELECT u.org, u.run, 'step.succeeded', u.step, u.attempt
          FROM unnest(a_org, a_run, a_step, a_attempt) AS u(org, run, step, attempt);
        -- Release dependents (a fan-in step may be released by several steps of the batch).
        WITH d AS (
            SELECT u.run, dep, count(*)::integer AS n
              FROM unnest(a_run, a_deps) AS u(run, deps), jsonb_array_elements_text(u.deps) dep
             GROUP BY u.run, dep
        ), dec AS (
            UPDATE run_steps s SET pending_deps = s.pending_deps - d.n,
                   status = CASE WHEN s.pending_deps - d.n <= 0 THEN 'queued' ELSE s.status END
              FROM d WHERE s.run_id = d.run AND s.step_id = d.dep AND s.status = 'pending'
            RETURNING s.org_id, s.run_id, s.step_id, s.pending_deps
        )
        INSERT INTO jobs (org_id, kind, run_id, step_id, attempt)
        SELECT dec.org_id, 'step', dec.run_id, dec.step_id, 1 FROM dec WHERE dec.pending_deps <= 0;
        -- Count the steps done; a run whose last step this was is finished.
        WITH c AS (
            SELECT u.run, count(*)::integer AS n FROM unnest(a_run) AS u(run) GROUP BY u.run
        ), fin AS (
            UPDATE runs r SET steps_done = r.steps_done + c.n,
                   started_at = coalesce(r.started_at, now()),
                   state = CASE WHEN r.steps_done + c.n < r.steps_total THEN 'running'
                                WHEN r.steps_failed > 0 THEN 'partial' ELSE 'succeeded' END,
                   finished_at = CASE WHEN r.steps_done + c.n < r.steps_total THEN NULL ELSE now() END
              FROM c WHERE r.id = c.run
            RETURNING r.org_id, r.id, r.state
        )
        INSERT INTO run_events (org_id, run_id, kind)
        SELECT fin.org_id, fin.id, 'run.' || fin.state FROM fin WHERE fin.state <> 'running';
    END IF;

    -- Everything else, one by one: failures (each may retry, fail the run or let it go on),
    -- results for runs that ended or vanished meanwhile, attempts recorded before.
    FOR it IN SELECT e FROM jsonb_array_elements(p_items) e
               WHERE NOT coalesce((e->>'noop')::boolean, false)
                 AND NOT (e->>'job')::bigint = ANY (coalesce(a_job, '{}'))
               ORDER BY e->>'run', e->>'step' LOOP
        v_run := (it->>'run')::uuid;
        v_step := it->>'step';
        v_attempt := (it->>'attempt')::integer;

        SELECT r.org_id, r.state INTO v_org, v_state FROM runs r WHERE r.id = v_run;  -- locked above
        IF NOT FOUND THEN
            v_done := v_done || (it->>'job')::bigint;
            CONTINUE;
        END IF;

        INSERT INTO step_attempts (run_id, org_id, step_id, attempt, execution_id, worker, status,
                                   error_code, error_message, receipt, started_at, finished_at)
        VALUES (v_run, v_org, v_step, v_attempt, it->>'execution_id', p_worker, it->>'status',
                it->>'error_code', it->>'error_message', it->'receipt',
                (it->>'started_at')::timestamptz, (it->>'finished_at')::timestamptz)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            CONTINUE;  -- another worker recorded this attempt first
        END IF;
        v_recorded := v_recorded + 1;
        v_done := v_done || (it->>'job')::bigint;

        INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size)
        SELECT v_run, v_org, a->>'path', v_step, v_attempt, a->>'sha256', (a->>'size')::bigint
          FROM jsonb_array_elements(coalesce(it->'artifacts', '[]')) a
        ON CONFLICT (run_id, path) DO NOTHING;

        IF v_state NOT IN ('queued', 'running') THEN
            -- the run was cancelled or has failed meanwhile: record, advance nothing
            UPDATE run_steps SET attempts = greatest(attempts, v_attempt), finished_at = now(),
                   status = CASE WHEN status IN ('running', 'queued') THEN 'cancelled' ELSE status END
             WHERE run_id = v_run AND step_id = v_step;
            INSERT INTO run_events (org_id, run_id, kind, step_id, attempt, data)
            VALUES (v_org, v_run, 'step.' || (it->>'status'), v_step, v_attempt,
                    jsonb_build_object('error_code', it->>'error_code', 'after', v_state));
            CONTINUE;
        END IF;

        IF it->'retry_in_ms' IS NOT NULL AND jsonb_typeof(it->'retry_in_ms') = 'number' THEN
            UPDATE run_steps SET status = 'queued', attempts = v_attempt,
                   error_code = it->>'error_code', error_message = it->>'error_message'
             WHERE run_id = v_run AND step_id = v_step;
            INSERT INTO jobs (org_id, kind, run_id, step_id, attempt, run_at)
            VALUES (v_org, 'step', v_run, v_step, v_attempt + 1,
                    now() + make_interval(secs => (it->>'retry_in_ms')::integer / 1000.0));
            INSERT INTO run_events (org_id, run_id, kind, step_id, attempt, data)
            VALUES (v_org, v_run, 'step.retrying', v_step, v_attempt,
                    jsonb_build_object('error_code', it->>'error_code',
                                       'retry_in_ms', (it->>'retry_in_ms')::integer));
            CONTINUE;
        END IF;

        UPDATE run_steps SET status = 'failed', attempts = v_attempt, finished_at = now(),
               error_code = it->>'error_code', error_message = it->>'error_message'
         WHERE run_id = v_run AND step_id = v_step;
        INSERT INTO run_events (org_id, run_id, kind, step_id, attempt, data)
        VALUES (v_org, v_run, 'step.failed', v_step, v_attempt,
                jsonb_build_object('error_code', it->>'error_code'));
        IF it->>'on_failure' IS DISTINCT FROM 'continue' THEN
            UPDATE runs SET state = 'failed', finished_at = now(),
                            started_at = coalesce(started_at, now()),
                            steps_done = steps_done + 1, steps_failed = steps_failed + 1
             WHERE id = v_run;
            UPDATE run_steps SET status = 'cancelled', finished_at = now()
             WHERE run_id = v_run AND status IN ('pending', 'queued');
            DELETE FROM jobs WHERE run_id = v_run AND state = 'queued';
            INSERT INTO run_events (org_id, run_id, kind, data)
            VALUES (v_org, v_run, 'run.failed', jsonb_build_object('step', v_step));
            CONTINUE;
        END IF;

        -- on_failure: continue. The run goes on: dependents are released as after a success;
        -- one that references this step's (missing) outputs fails to resolve them.
        WITH dec AS (
            UPDATE run_steps s SET pending_deps = s.pending_deps - 1,
                   status = CASE WHEN s.pending_deps = 1 THEN 'queued' ELSE s.status END
             WHERE s.run_id = v_run AND s.status = 'pending'
               AND s.step_id IN (SELECT jsonb_array_elements_text(it->'dependents'))
            RETURNING s.step_id, s.pending_deps
        ) SELECT array_agg(dec.step_id) FILTER (WHERE dec.pending_deps = 0) INTO v_ready FROM dec;
        IF v_ready IS NOT NULL THEN
            INSERT INTO jobs (org_id, kind, run_id, step_id, attempt)
            SELECT v_org, 'step', v_run, s, 1 FROM unnest(v_ready) s;
        END IF;
        UPDATE runs SET steps_done = steps_done + 1, steps_failed = steps_failed + 1,
                        started_at = coalesce(started_at, now()),
                        state = CASE WHEN steps_done + 1 < steps_total THEN 'running'
                                     ELSE 'partial' END,
                        finished_at = CASE WHEN steps_done + 1 < steps_total THEN NULL ELSE now() END
         WHERE id = v_run
        RETURNING state INTO v_state;
        IF v_state = 'partial' THEN
            INSERT INTO run_events (org_id, run_id, kind) VALUES (v_org, v_run, 'run.partial');
        END IF;
    END LOOP;

    -- One statement removes the finished jobs: org_job_counts' rows are then locked once, in
    -- org order, just before commit.
    WITH gone AS (DELETE FROM jobs WHERE id = ANY (v_done) RETURNING id)
    SELECT count(*) FILTER (WHERE gone.id = ANY (v_noops)) INTO v_deleted FROM gone;
    RETURN v_recorded + v_deleted;
END
$$;

-- Started: as in 0008, with the steps found one lookup per job.
CREATE OR REPLACE FUNCTION operator_started(p_jobs bigint[])
RETURNS TABLE (job_id bigint, run_id uuid, step_id text, attempt integer, org_id uuid,
               state text, mode text, inputs jsonb, outputs jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    UPDATE runs r SET state = 'running', started_at = coalesce(r.started_at, now())
     WHERE r.id = ANY (ARRAY(
        SELECT q.id FROM runs q
         WHERE q.state = 'queued'
           AND q.id = ANY (ARRAY(SELECT j.run_id FROM jobs j WHERE j.id = ANY (p_jobs)))
         FOR UPDATE SKIP LOCKED));
    -- One primary-key lookup per job. (0008 also filtered on `run_id = ANY (all the batch's
    -- runs)`, which made the planner look up every run of the batch once per job.)
    UPDATE run_steps s SET status = 'running', started_at = coalesce(s.started_at, now())
      FROM jobs j
     WHERE j.id = ANY (p_jobs) AND s.run_id = j.run_id AND s.step_id = j.step_id
       AND s.status IN ('queued', 'running');
    INSERT INTO run_events (org_id, run_id, kind, step_id, attempt)
    SELECT j.org_id, j.run_id, 'step.started', j.step_id, j.attempt FROM jobs j
     WHERE j.id = ANY (p_jobs) AND j.kind = 'step';
    RETURN QUERY
    SELECT j.id, j.run_id, j.step_id, j.attempt, j.org_id, r.state, r.mode, r.inputs,
           (SELECT coalesce(jsonb_object_agg(s.step_id, s.outputs), '{}') FROM run_steps s
             WHERE s.run_id = j.run_id AND s.outputs IS NOT NULL)
      FROM jobs j JOIN runs r ON r.id = j.run_id
     WHERE j.id = ANY (p_jobs) AND j.kind = 'step';
END
$$;

-- CREATE OR REPLACE drops a function's settings: set them again (see the end of 0008).
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['operator_claim(uuid, integer, integer, integer)',
                             'operator_started(bigint[])', 'operator_complete(uuid, jsonb)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_custom_plan', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = off', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_hashjoin = off', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_mergejoin = off', f);
    END LOOP;
END $$;
