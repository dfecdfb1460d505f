//! Signed pack bundles (work in progress by the packs helper).
