//! Cron schedules (stub; being written).
