-- operator_claim keeps its plans per connection, as operator_complete and operator_started do
-- since 0013. 0013 left it out because cached plans made no measurable difference to it in the
-- pipeline benchmark, where claims are small. In the queue benchmark a claim takes 256 jobs,
-- and planning its statements was about a fifth of its time: measured alone (pgbench, one
-- client, claim and delete 256 jobs at a time over 10 orgs), a claim took 3.3-3.9 ms with
-- cached plans against 4.8-5.2 ms planning every statement. The settings that rule out plans
-- a batch's size could change (no sequential scans, hash or merge joins) stay.
--
-- Claims are serialised by an advisory lock, so their time bounds the queue's throughput.
ALTER FUNCTION operator_claim(uuid, integer, integer, integer) RESET plan_cache_mode;

-- The running counts' trigger updates its orgs' rows of org_job_counts through the primary key,
-- in key order: claims, completions and releases each lock these rows in one statement, and
-- the same order for all keeps them from deadlocking. A bitmap scan (which the planner chose
-- for a few orgs) visits rows in their physical order instead, which the same order of keys
-- does not guarantee once a row's update has had to move it to another page.
ALTER FUNCTION jobs_count_running() SET enable_bitmapscan = off;
