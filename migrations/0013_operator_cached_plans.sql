-- operator_complete and operator_started keep their plans per connection instead of planning
-- every statement at every call (0008 set plan_cache_mode = force_custom_plan on all three
-- queue functions).
--
-- Planning is a fixed cost per call, and their calls are batches of a few hundred rows or
-- fewer: in the pipeline benchmark the two functions used ~12 % less PostgreSQL CPU per step
-- with cached plans (five A/B pairs, 10-14 % each). The reason 0008 gave for custom plans
-- does not apply to them: the plans a batch's size could change are ruled out by the
-- functions' other settings (no sequential scans, hash or merge joins), so every plan, cached
-- or not, is index lookups in nested loops. operator_claim keeps custom plans: its loose
-- index scan reads `now()` and per-org arrays, and cached plans made no measurable difference
-- to it.
--
-- (CREATE OR REPLACE FUNCTION drops a function's settings: a later migration that replaces
-- either function must set enable_seqscan, enable_hashjoin and enable_mergejoin again.)
ALTER FUNCTION operator_complete(uuid, jsonb) RESET plan_cache_mode;
ALTER FUNCTION operator_started(bigint[]) RESET plan_cache_mode;
