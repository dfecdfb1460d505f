-- Invalidation for the API replicas' read cache (crates/api/src/cache.rs): a change to any row
-- a cached answer was read from notifies `builderos_cache` with the row's org (or `*`). The
-- notification is delivered when the transaction commits, to every replica, which drops that
-- org's cached entries. Because the triggers sit on the tables, no write path can forget.

CREATE FUNCTION cache_invalidate_org() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('builderos_cache', OLD.org_id::text);
    ELSE
        PERFORM pg_notify('builderos_cache', NEW.org_id::text);
        IF TG_OP = 'UPDATE' AND OLD.org_id IS DISTINCT FROM NEW.org_id THEN
            PERFORM pg_notify('builderos_cache', OLD.org_id::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION cache_invalidate_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('builderos_cache', '*');
    RETURN NULL;
END
$$;

-- Tokens: everything but the minute-granular `last_used_at` that authentication itself writes.
CREATE TRIGGER api_tokens_cache AFTER UPDATE OF org_id, name, token_hash, permissions, project_id,
    created_by, expires_at, revoked_at OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate_org();
-- A token never exceeds its user's current role.
CREATE TRIGGER memberships_cache AFTER INSERT OR UPDATE OR DELETE ON memberships
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate_org();
-- A deleted user's tokens stop working.
CREATE TRIGGER users_cache AFTER UPDATE OF deleted_at OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate_all();
-- Prompt references: the prompt (name, project, deletion) and where its labels point.
CREATE TRIGGER prompts_cache AFTER UPDATE OR DELETE ON prompts
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate_org();
CREATE TRIGGER prompt_labels_cache AFTER INSERT OR UPDATE OR DELETE ON prompt_labels
    FOR EACH ROW EXECUTE FUNCTION cache_invalidate_org();
