-- The operator: pipeline definitions, runs and their steps, the job queue, attempts with their
-- receipts, artifacts, run events, cron triggers, per-org limits and the processor allowlist.
--
-- Tenant tables follow the usual rule (RLS keyed by app.org_id). The operator works across
-- orgs: its connections start with `app.operator = on` (a connection option, see
-- crates/operator/src/store.rs), which the policies below also admit. The API never sets it.
--
-- The queue's hot paths are two functions so that a batch is one round trip:
--   operator_claim     fair, limit-respecting batched claim with FOR UPDATE SKIP LOCKED
--   operator_complete  records a batch of attempt results exactly once and advances the runs

CREATE FUNCTION app_operator() RETURNS boolean LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('app.operator', true), '') = 'on' $$;

CREATE TABLE pipelines (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id      uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name            text NOT NULL,
    latest_version  integer NOT NULL,
    created_by      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pipelines_project_name_key UNIQUE (project_id, name)
);
CREATE INDEX pipelines_org_idx ON pipelines (org_id, project_id, name);

CREATE TABLE pipeline_versions (
    pipeline_id  uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    org_id       uuid NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    definition   jsonb NOT NULL,
    source       text NOT NULL,
    format       text NOT NULL CHECK (format IN ('yaml', 'json')),
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, version)
);

-- Cron triggers of each pipeline's latest version; `next_at` is claimed by exactly one operator.
CREATE TABLE cron_triggers (
    pipeline_id  uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    idx          integer NOT NULL,
    org_id       uuid NOT NULL,
    schedule     text NOT NULL,
    timezone     text NOT NULL,
    inputs       jsonb NOT NULL DEFAULT '{}',
    next_at      timestamptz NOT NULL,
    last_tick_at timestamptz,
    PRIMARY KEY (pipeline_id, idx)
);
CREATE INDEX cron_triggers_due_idx ON cron_triggers (next_at);

CREATE TABLE org_operator_settings (
    org_id           uuid PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    max_concurrency  integer NOT NULL CHECK (max_concurrency BETWEEN 1 AND 10000),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- HTTP processors an org may call, by origin (scheme://host:port). Builtins need no entry.
CREATE TABLE processor_allowlist (
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    origin      text NOT NULL,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, origin)
);

CREATE TABLE runs (
    id                uuid PRIMARY KEY,
    org_id            uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id        uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    pipeline_id       uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    pipeline_version  integer NOT NULL,
    snapshot          jsonb NOT NULL,
    inputs            jsonb NOT NULL DEFAULT '{}',
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'waiting_approval',
                          'succeeded', 'failed', 'partial', 'cancelled')),
    mode              text NOT NULL CHECK (mode IN ('mock', 'real')),
    trigger           text NOT NULL CHECK (trigger IN ('api', 'cron')),
    idempotency_key   text,
    created_by        uuid,
    steps_total       integer NOT NULL,
    steps_done        integer NOT NULL DEFAULT 0,
    steps_failed      integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    cancelled_by      uuid
);
CREATE UNIQUE INDEX runs_idempotency_key ON runs (org_id, pipeline_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_list_idx ON runs (org_id, created_at DESC, id DESC);
CREATE INDEX runs_active_idx ON runs (id) WHERE state IN ('queued', 'running', 'waiting_approval');
-- A run's row changes with every step it finishes, a step's row three times or more: room on
-- each page keeps those updates HOT (no new index entries, no versions to step over).
ALTER TABLE runs SET (fillfactor = 50);

CREATE TABLE run_steps (
    run_id         uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    org_id         uuid NOT NULL,
    step_id        text NOT NULL,
    status         text NOT NULL CHECK (status IN ('pending', 'queued', 'running', 'succeeded',
                       'failed', 'skipped', 'cancelled')),
    pending_deps   integer NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    started_at     timestamptz,
    finished_at    timestamptz,
    error_code     text,
    error_message  text,
    -- Referenceable text outputs ({name: text}) for later steps' inputs; small by construction.
    outputs        jsonb,
    PRIMARY KEY (run_id, step_id)
);
ALTER TABLE run_steps SET (fillfactor = 50);

-- The queue. A job is one attempt of one step (kind `step`), or a no-op (kind `noop`) that
-- exercises the queue alone. Finished jobs are deleted; their record is step_attempts.
CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id       uuid NOT NULL,
    kind         text NOT NULL DEFAULT 'step' CHECK (kind IN ('step', 'noop')),
    run_id       uuid,
    step_id      text,
    attempt      integer NOT NULL DEFAULT 1,
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    run_at       timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner  uuid,
    lease_until  timestamptz,
    CHECK (kind = 'noop' OR (run_id IS NOT NULL AND step_id IS NOT NULL))
);
CREATE INDEX jobs_ready_idx ON jobs (org_id, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_running_idx ON jobs (org_id) WHERE state = 'running';
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_run_idx ON jobs (run_id);
-- Vacuumed early: it holds few live rows, but every claim and completion leaves dead ones (and
-- index entries) that claims would otherwise step over.
ALTER TABLE jobs SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
                      autovacuum_vacuum_cost_limit = 2000);

-- Idle workers wake on this; one notification per inserting statement.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('builderos_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();

-- One row per finished attempt: the primary key makes a completion count once, however many
-- workers race to record it after a lease expired.
CREATE TABLE step_attempts (
    run_id         uuid NOT NULL,  -- no FK: see runs_cleanup below
    org_id         uuid NOT NULL,
    step_id        text NOT NULL,
    attempt        integer NOT NULL,
    execution_id   text NOT NULL,
    worker         uuid NOT NULL,
    status         text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    error_code     text,
    error_message  text,
    receipt        jsonb NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE TABLE artifacts (
    run_id      uuid NOT NULL,  -- no FK: see runs_cleanup below
    org_id      uuid NOT NULL,
    path        text NOT NULL,
    step_id     text NOT NULL,
    attempt     integer NOT NULL,
    sha256      text NOT NULL,
    size        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, path)
);

-- The timeline of a run (and what its event stream sends).
CREATE TABLE run_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id   uuid NOT NULL,
    run_id   uuid NOT NULL,  -- no FK: see runs_cleanup below
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text NOT NULL,
    step_id  text,
    attempt  integer,
    data     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX run_events_run_idx ON run_events (run_id, id);

-- The three append-only tables above get several rows per step; a foreign key would run a
-- lookup in runs for each of them on the operator's hottest path. They are written only by
-- the operator's functions for runs they have locked, and are removed with their run here,
-- once per deleting statement (an org's deletion cascades to its runs and on to these).
-- SECURITY DEFINER: the app role may not delete from these tables itself (they are append-only
-- for it); row-level security still limits the deletes to the deleting transaction's org.
CREATE FUNCTION runs_cleanup() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_prev text := current_setting('app.operator', true);
BEGIN
    -- Whoever deleted the runs (an org-scoped request, an operator, an administrator), their
    -- rows go with them: see them all for these three statements, then restore the setting.
    PERFORM set_config('app.operator', 'on', true);
    DELETE FROM step_attempts WHERE run_id IN (SELECT id FROM gone);
    DELETE FROM artifacts WHERE run_id IN (SELECT id FROM gone);
    DELETE FROM run_events WHERE run_id IN (SELECT id FROM gone);
    PERFORM set_config('app.operator', coalesce(v_prev, ''), true);
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_cleanup AFTER DELETE ON runs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION runs_cleanup();

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pipelines', 'pipeline_versions', 'cron_triggers', 'org_operator_settings',
                             'processor_allowlist', 'runs', 'run_steps', 'jobs', 'step_attempts',
                             'artifacts', 'run_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I USING (org_id = app_org_id() OR app_operator()) '
                       'WITH CHECK (org_id = app_org_id() OR app_operator())', t || '_tenant', t);
    END LOOP;
END $$;

GRANT SELECT, INSERT, UPDATE ON pipelines, runs, run_steps TO builderos_app;
GRANT SELECT, INSERT ON pipeline_versions, step_attempts, artifacts, run_events TO builderos_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, cron_triggers, org_operator_settings,
    processor_allowlist TO builderos_app;

-- Claim ------------------------------------------------------------------------------------
--
-- Takes back expired leases, then claims up to p_max ready jobs for p_worker, fairly across
-- orgs: orgs are served in order of their share of running slots (running / limit), each gets
-- at most an equal share of what is left of the batch and never more than its free slots.
-- Claims are serialised by a transaction-level advisory lock so per-org limits hold exactly
-- across operator processes; the job rows themselves are taken with FOR UPDATE SKIP LOCKED.
CREATE FUNCTION operator_claim(p_worker uuid, p_max integer, p_lease_ms integer, p_default_limit integer)
RETURNS TABLE (job_id bigint, org_id uuid, kind text, run_id uuid, step_id text, attempt integer,
               enqueued_at timestamptz, expired integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_expired integer;
    v_left integer := p_max;
    v_orgs uuid[];
    v_free integer[];
    v_n integer;
    v_take integer;
    i integer;
BEGIN
    PERFORM pg_advisory_xact_lock(727001);

    WITH e AS (
        UPDATE jobs j SET state = 'queued', lease_owner = NULL, lease_until = NULL
         WHERE j.state = 'running' AND j.lease_until < now()
        RETURNING j.id
    ) SELECT count(*) INTO v_expired FROM e;

    WITH RECURSIVE ready(org) AS (
        (SELECT q.org_id FROM jobs q WHERE q.state = 'queued' AND q.run_at <= now()
          ORDER BY q.org_id LIMIT 1)
        UNION ALL
        SELECT (SELECT q.org_id FROM jobs q
                 WHERE q.state = 'queued' AND q.run_at <= now() AND q.org_id > ready.org
                 ORDER BY q.org_id LIMIT 1)
          FROM ready WHERE ready.org IS NOT NULL
    ), busy AS (
        SELECT r.org_id AS org, count(*)::integer AS n FROM jobs r
         WHERE r.state = 'running' GROUP BY r.org_id
    ), slots AS (
        SELECT ready.org,
               coalesce(busy.n, 0) AS running,
               coalesce(s.max_concurrency, p_default_limit) AS lim
          FROM ready
          LEFT JOIN busy ON busy.org = ready.org
          LEFT JOIN org_operator_settings s ON s.org_id = ready.org
         WHERE ready.org IS NOT NULL
    )
    SELECT array_agg(slots.org ORDER BY slots.running::float8 / slots.lim, slots.org),
           array_agg(slots.lim - slots.running ORDER BY slots.running::float8 / slots.lim, slots.org)
      INTO v_orgs, v_free
      FROM slots WHERE slots.lim > slots.running;

    v_n := coalesce(array_length(v_orgs, 1), 0);
    FOR i IN 1 .. v_n LOOP
        EXIT WHEN v_left <= 0;
        -- an equal share of what is left, rounded up, within the org's free slots
        v_take := least(v_free[i], (v_left + (v_n - i)) / (v_n - i + 1));
        CONTINUE WHEN v_take <= 0;
        RETURN QUERY
        WITH picked AS (
            SELECT q.id FROM jobs q
             WHERE q.org_id = v_orgs[i] AND q.state = 'queued' AND q.run_at <= now()
             ORDER BY q.run_at, q.id
             LIMIT v_take
             FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE jobs j SET state = 'running', lease_owner = p_worker,
                              lease_until = now() + make_interval(secs => p_lease_ms / 1000.0)
              FROM picked WHERE j.id = picked.id
            RETURNING j.id, j.org_id, j.kind, j.run_id, j.step_id, j.attempt, j.enqueued_at
        )
        SELECT c.id, c.org_id, c.kind, c.run_id, c.step_id, c.attempt, c.enqueued_at, v_expired
          FROM claimed c;
        GET DIAGNOSTICS v_take = ROW_COUNT;
        v_left := v_left - v_take;
    END LOOP;

    IF v_expired > 0 AND v_left = p_max THEN
        -- report take-backs even when nothing was claimed
        RETURN QUERY SELECT NULL::bigint, NULL::uuid, NULL::text, NULL::uuid, NULL::text,
                            NULL::integer, NULL::timestamptz, v_expired;
    END IF;
END
$$;

-- Complete ---------------------------------------------------------------------------------
--
-- p_items: a JSON array of attempt results, each
--   {job, run, org, step, attempt, execution_id, status: succeeded|failed, error_code, error_message,
--    outputs: {name: text} | null, receipt, started_at, finished_at,
--    retry_in_ms: integer | null (failed and another attempt is due),
--    on_failure: fail|continue, dependents: [step],
--    artifacts: [{path, sha256, size}]}
-- and {job, noop: true} for no-op jobs.
-- Returns how many items were recorded (an attempt already recorded by another worker is
-- skipped: exactly once).
--
-- Every run of the batch is locked first, in id order (the one order in which anything locks
-- several runs, so concurrent calls never deadlock). Successes of active runs, nearly all of
-- the traffic, are then recorded with a handful of set-based statements for the whole batch;
-- the rest (failures, results for runs that ended or vanished meanwhile) one by one.
CREATE FUNCTION operator_complete(p_worker uuid, p_items jsonb)
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
BEGIN
    -- No-op jobs: deleting the row is the record (a second completion deletes nothing).
    DELETE FROM jobs WHERE id = ANY (ARRAY(
        SELECT (e->>'job')::bigint FROM jsonb_array_elements(p_items) e WHERE (e->>'noop')::boolean));
    GET DIAGNOSTICS v_recorded = ROW_COUNT;

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
        DELETE FROM jobs WHERE id = ANY (a_job);
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
            DELETE FROM jobs WHERE id = (it->>'job')::bigint;
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
        DELETE FROM jobs WHERE id = (it->>'job')::bigint;

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

    RETURN v_recorded;
END
$$;

-- Marks claimed step jobs' steps (and their runs) as running, and returns what the steps need.
-- Separate from the claim so that no-op jobs pay nothing for it. It takes no lock it would have
-- to wait for on runs: a run another transaction holds is left for operator_complete to mark.
CREATE FUNCTION operator_started(p_jobs bigint[])
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
    UPDATE run_steps s SET status = 'running', started_at = coalesce(s.started_at, now())
      FROM jobs j
     WHERE s.run_id = ANY (ARRAY(SELECT q.run_id FROM jobs q WHERE q.id = ANY (p_jobs)))
       AND j.id = ANY (p_jobs) AND s.run_id = j.run_id AND s.step_id = j.step_id
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

-- The once-per-batch functions see arrays of very different sizes from call to call; a plan
-- cached for one size can be badly wrong for the next, and planning their few statements per
-- call is cheap. A batch touches a few hundred rows of tables that hold many thousands: the
-- right plan is always index lookups in nested loops, but a set estimated from a JSON array or
-- an unnest can make a hash join over a sequential scan of a whole table look cheaper. Those
-- are ruled out for these functions (measured in the pipeline bench: claims 4x faster,
-- completions 3x).
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
