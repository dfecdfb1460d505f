-- Artifacts record where the store keeps their bytes.
--
-- The local artifact store appends small blobs (up to 1 MiB: receipts, indexes, most outputs)
-- to segment files instead of creating a file per blob. A file per blob cost an inode per step,
-- and allocating inodes was about half of the operator's CPU in the pipeline benchmark (ext4 without
-- a journal skips every inode freed in the last minute, one buffer lookup each). A blob in a
-- segment is found by its location (`segment/<id>/<offset>`), which the worker sends with each
-- artifact and operator_complete records here. NULL: a file named by the digest, as before.
ALTER TABLE artifacts ADD COLUMN location text;
COMMENT ON COLUMN artifacts.location IS
    'Where the artifact store keeps the bytes, as its put returned it (opaque to everyone else); '
    'NULL: under the SHA-256 alone.';

-- Complete: as in 0010, with each artifact's location recorded.
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
        INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size, location)
        SELECT u.run, u.org, a->>'path', u.step, u.attempt, a->>'sha256', (a->>'size')::bigint,
               a->>'location'
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

        INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size, location)
        SELECT v_run, v_org, a->>'path', v_step, v_attempt, a->>'sha256', (a->>'size')::bigint,
               a->>'location'
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

-- CREATE OR REPLACE drops a function's settings: set again those 0008 gave it (0013 let it
-- keep its plans per connection).
ALTER FUNCTION operator_complete(uuid, jsonb) SET enable_seqscan = off;
ALTER FUNCTION operator_complete(uuid, jsonb) SET enable_hashjoin = off;
ALTER FUNCTION operator_complete(uuid, jsonb) SET enable_mergejoin = off;
