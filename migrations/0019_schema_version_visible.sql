-- The app can read which migrations the database has, so that `builderos serve` and
-- `builderos operator` refuse to start against a schema older than the one their build was
-- written for (they would fail on every statement that uses what is missing — an operator
-- would retry recording its results forever) and say to run `builderos migrate` instead.
-- `_sqlx_migrations` is the migration history sqlx keeps (created by the first `migrate`).
GRANT SELECT ON _sqlx_migrations TO builderos_app;
