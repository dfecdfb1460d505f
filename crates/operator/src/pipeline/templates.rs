//! The shipped pipeline templates (`crates/operator/templates/*.yaml`), built into the binary.
//!
//! They use builtin processors only, so each runs end to end out of the box. They assume
//! `builtin:echo` returns each of its inputs as an output of the same name, which is what their
//! `${steps.<id>.outputs.<name>}` references read.

/// A shipped template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Its name (`feature`, `hotfix`, `data`).
    pub name: &'static str,
    /// One line on what it does (the same as the definition's `description`).
    pub description: &'static str,
    /// The YAML definition.
    pub source: &'static str,
}

static ALL: [Template; 3] = [
    Template {
        name: "feature",
        description: "Plan a feature, implement it, test and lint in parallel, review, then deploy to production after approval.",
        source: include_str!("../../templates/feature.yaml"),
    },
    Template {
        name: "hotfix",
        description: "Patch a production incident, test the patch, then deploy it to production after approval.",
        source: include_str!("../../templates/hotfix.yaml"),
    },
    Template {
        name: "data",
        description: "Extract a day of records, transform them in parallel, and load the results; runs nightly.",
        source: include_str!("../../templates/data.yaml"),
    },
];

/// Every shipped template.
#[must_use]
pub fn all() -> &'static [Template] {
    &ALL
}

/// The template called `name`.
#[must_use]
pub fn get(name: &str) -> Option<&'static Template> {
    ALL.iter().find(|t| t.name == name)
}
