-- audit_seal keeps one plan per connection.
--
-- A background sealer seals a batch every fraction of a second, on whichever pooled connection
-- it gets, and every read of the trail seals its org first. PL/pgSQL plans each statement of
-- `audit_seal` with the call's values (a custom plan) until the plan cache decides a generic
-- plan is as good, and the sealing statement (0012) is a large one: measured alone, a batch of
-- 16 events took 3.2-3.9 ms with custom plans (until the cache switched, at the eighth call) and
-- 2.5-2.8 ms, once 3.2, with the generic plan (warm connection, PostgreSQL 15). The plan does not depend on the values: the journal is read
-- whole or by chain, and the heads by their key.
ALTER FUNCTION audit_seal(uuid) SET plan_cache_mode = force_generic_plan;
