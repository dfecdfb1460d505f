-- Audit trail: indexes for the admin query patterns, per-org retention, and the anchors that
-- keep a pruned chain verifiable.

-- Newest-first keyset pagination within an org, optionally bounded in time.
CREATE INDEX audit_events_org_seq_idx ON audit_events (org_id, seq DESC);
CREATE INDEX audit_events_org_time_idx ON audit_events (org_id, occurred_at DESC, seq DESC);
-- Filters: by actor (id or display name), by action (exact or prefix), by target.
CREATE INDEX audit_events_org_actor_idx ON audit_events (org_id, actor_name, seq DESC);
CREATE INDEX audit_events_org_actor_id_idx ON audit_events (org_id, actor_id, seq DESC);
CREATE INDEX audit_events_org_action_idx ON audit_events (org_id, action text_pattern_ops, seq DESC);
CREATE INDEX audit_events_org_target_idx ON audit_events (org_id, target_type, target_id, seq DESC);

-- Retention: NULL keeps events forever.
ALTER TABLE orgs ADD COLUMN audit_retention_days integer
    CHECK (audit_retention_days IS NULL OR audit_retention_days BETWEEN 1 AND 36500);
COMMENT ON COLUMN orgs.audit_retention_days IS 'events older than this many days are pruned by `builderos audit prune`; NULL keeps them';

-- When events are pruned, the last pruned event's seq and hash are kept, so the remaining
-- chain still verifies from its first event.
CREATE TABLE audit_anchors (
    org_id      uuid PRIMARY KEY,
    seq         bigint NOT NULL,
    hash        text NOT NULL,
    pruned      bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit_anchors ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_anchors FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_anchors_tenant ON audit_anchors
    USING (org_id = app_org_id()) WITH CHECK (org_id = app_org_id());
GRANT SELECT ON audit_anchors TO builderos_app;

-- Maintenance (pruning) is the one thing allowed to delete events. It runs as a member of the
-- NOLOGIN role `builderos_maintenance` (created by `builderos migrate` and granted to the
-- schema owner), never as the app.
CREATE POLICY audit_events_maintenance ON audit_events TO builderos_maintenance USING (true) WITH CHECK (true);
CREATE POLICY audit_anchors_maintenance ON audit_anchors TO builderos_maintenance USING (true) WITH CHECK (true);
CREATE POLICY audit_heads_maintenance ON audit_heads TO builderos_maintenance USING (true) WITH CHECK (true);
CREATE POLICY orgs_maintenance ON orgs TO builderos_maintenance USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON audit_events TO builderos_maintenance;
GRANT SELECT, INSERT, UPDATE ON audit_anchors, audit_heads TO builderos_maintenance;
GRANT SELECT ON orgs TO builderos_maintenance;
