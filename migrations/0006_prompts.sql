-- The shared prompt registry: prompts, immutable semver versions, labels with their history,
-- eval cases and eval results. Every table is tenant-scoped by org_id under FORCEd row-level
-- security, like the identity tables.

CREATE TABLE prompts (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id  uuid REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    tags        text[] NOT NULL DEFAULT '{}',
    owner_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- One name per org-wide scope and per project.
    CONSTRAINT prompts_org_project_name_key UNIQUE NULLS NOT DISTINCT (org_id, project_id, name)
);
CREATE INDEX prompts_org_name ON prompts (org_id, name, id);
CREATE INDEX prompts_tags ON prompts USING gin (tags);

-- Published versions never change: the app role may insert and read them, nothing else.
CREATE TABLE prompt_versions (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    prompt_id    uuid NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    version      text NOT NULL,
    changelog    text NOT NULL CHECK (changelog <> ''),
    spec_yaml    text NOT NULL,
    spec         jsonb NOT NULL,
    content_hash text NOT NULL,
    author_id    uuid,
    author_name  text NOT NULL,
    source       text NOT NULL DEFAULT 'published' CHECK (source IN ('published', 'imported')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prompt_versions_prompt_version_key UNIQUE (prompt_id, version)
);

CREATE TABLE prompt_labels (
    prompt_id   uuid NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    version_id  uuid NOT NULL REFERENCES prompt_versions (id) ON DELETE CASCADE,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prompt_id, name)
);

-- Who moved which label from which version to which, and when; append-only.
CREATE TABLE prompt_label_moves (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    prompt_id     uuid NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    label         text NOT NULL,
    from_version  text,
    to_version    text,
    actor_type    text NOT NULL,
    actor_id      uuid,
    actor_name    text NOT NULL,
    override_reason text,
    moved_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_label_moves_prompt ON prompt_label_moves (prompt_id, moved_at DESC, id DESC);

CREATE TABLE prompt_eval_cases (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    prompt_id   uuid NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    inputs      jsonb NOT NULL,
    expect      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prompt_eval_cases_prompt_name_key UNIQUE (prompt_id, name)
);

-- One recorded evaluation of a version (posted by CI or a pipeline step) and its verdicts.
CREATE TABLE prompt_eval_runs (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    prompt_id   uuid NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    version_id  uuid NOT NULL REFERENCES prompt_versions (id) ON DELETE CASCADE,
    source      text NOT NULL,
    actor_name  text NOT NULL,
    passed      integer NOT NULL,
    failed      integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_eval_runs_version ON prompt_eval_runs (version_id, created_at DESC, id DESC);

CREATE TABLE prompt_eval_results (
    run_id     uuid NOT NULL REFERENCES prompt_eval_runs (id) ON DELETE CASCADE,
    case_id    uuid NOT NULL REFERENCES prompt_eval_cases (id) ON DELETE CASCADE,
    org_id     uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    passed     boolean NOT NULL,
    failures   jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, case_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['prompts', 'prompt_versions', 'prompt_labels', 'prompt_label_moves',
                             'prompt_eval_cases', 'prompt_eval_runs', 'prompt_eval_results'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I USING (org_id = app_org_id()) WITH CHECK (org_id = app_org_id())',
                       t || '_tenant', t);
    END LOOP;
END $$;

GRANT SELECT, INSERT, UPDATE ON prompts TO builderos_app;
GRANT SELECT, INSERT ON prompt_versions, prompt_label_moves, prompt_eval_runs, prompt_eval_results
    TO builderos_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON prompt_labels, prompt_eval_cases TO builderos_app;
