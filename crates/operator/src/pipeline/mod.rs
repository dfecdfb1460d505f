//! Pipeline definitions (stub; being written).
