//! The permission matrix: `verb:resource` permissions × roles, as data.
//!
//! Every handler names the permission it needs in one line
//! (`auth.authorize(&state, org, Permission::ProjectsWrite).await?`); `docs/permissions.md` is
//! rendered from this table by `builderos docs`, and a test fails when it drifts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! permissions {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal, $min:ident; )*) => {
        /// One thing a role or token may do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Permission { $( $(#[doc = $doc])* $variant, )* }

        impl Permission {
            /// Every permission, in matrix order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            /// The wire name, `verb:resource`.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }

            /// The least role that holds it (roles are cumulative).
            #[must_use]
            pub const fn min_role(self) -> Role {
                match self { $(Permission::$variant => Role::$min,)* }
            }

            /// What it allows, one line.
            #[must_use]
            pub const fn description(self) -> &'static str {
                match self { $(Permission::$variant => concat!($($doc),*),)* }
            }
        }
    };
}

permissions! {
    /// See the org, its settings and its projects list.
    OrgRead => "read:org", Viewer;
    /// Rename the org.
    OrgUpdate => "update:org", Owner;
    /// Delete the org.
    OrgDelete => "delete:org", Owner;
    /// List members and their roles.
    MembersRead => "read:members", Viewer;
    /// Invite members, change roles and remove members below Owner.
    MembersManage => "manage:members", Admin;
    /// Grant, change or remove the Owner role.
    OwnersManage => "manage:owners", Owner;
    /// Read projects and environments.
    ProjectsRead => "read:projects", Viewer;
    /// Create, rename and delete projects.
    ProjectsWrite => "write:projects", Admin;
    /// Add environments and change their protection rules.
    EnvironmentsWrite => "write:environments", Admin;
    /// List API tokens (never their secrets).
    TokensRead => "read:tokens", Viewer;
    /// Create and revoke API tokens, including service-account tokens.
    TokensManage => "manage:tokens", Admin;
    /// Read prompts and their versions.
    PromptsRead => "read:prompts", Viewer;
    /// Publish prompt versions and move non-production labels.
    PromptsPublish => "publish:prompts", Builder;
    /// Move the `production` label of a prompt.
    PromptsPromote => "promote:prompts", Admin;
    /// Read pipelines.
    PipelinesRead => "read:pipelines", Viewer;
    /// Create and edit pipelines.
    PipelinesWrite => "write:pipelines", Builder;
    /// Read runs, their steps, logs and artifacts.
    RunsRead => "read:runs", Viewer;
    /// Start and cancel runs.
    RunsWrite => "write:runs", Builder;
    /// Allow HTTP processors and set the org's run concurrency limit.
    ProcessorsManage => "manage:processors", Admin;
    /// Read deployments.
    DeploymentsRead => "read:deployments", Viewer;
    /// Deploy to unprotected environments and request protected deploys.
    DeploymentsWrite => "write:deployments", Builder;
    /// Approve or deny approval requests (never one's own).
    ApprovalsDecide => "decide:approvals", Reviewer;
    /// Browse the marketplace.
    MarketplaceRead => "read:marketplace", Viewer;
    /// Install, upgrade and uninstall packs into the org.
    PacksInstall => "install:packs", Admin;
    /// Query and verify the audit trail.
    AuditRead => "read:audit", Admin;
    /// Export the audit trail.
    AuditExport => "export:audit", Admin;
}

impl Permission {
    /// Parses a wire name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.as_str() == name)
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A member's role in an org. Each role includes every permission of the roles before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything of the org.
    Viewer,
    /// Publishes prompts, edits pipelines, runs them, deploys to unprotected environments.
    Builder,
    /// Decides approval requests.
    Reviewer,
    /// Manages members below Owner, projects, environments, tokens, packs; reads the audit trail.
    Admin,
    /// Manages owners; renames or deletes the org.
    Owner,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Builder,
        Role::Reviewer,
        Role::Admin,
        Role::Owner,
    ];

    /// The stored form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Builder => "builder",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses the stored form.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the role holds `permission`.
    #[must_use]
    pub fn allows(self, permission: Permission) -> bool {
        self >= permission.min_role()
    }

    /// Every permission the role holds.
    #[must_use]
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(|p| self.allows(*p))
            .collect()
    }
}

/// Renders the matrix as Markdown (`docs/permissions.md`).
#[must_use]
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Permissions\n\n\
         <!-- Generated from crates/api/src/permissions.rs by `builderos docs`; a test fails when it drifts. -->\n\n\
         Roles are cumulative: each includes every permission of the roles to its left. API tokens carry an\n\
         explicit subset of these permissions; a token acting for a user never exceeds that user's current role.\n\n\
         | permission | what it allows |",
    );
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n| --- | --- |");
    for _ in Role::ALL {
        out.push_str(" :-: |");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!(
            "| `{}` | {} |",
            p.as_str(),
            p.description().trim()
        ));
        for role in Role::ALL {
            out.push_str(if role.allows(*p) { " ✓ |" } else { " |" });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matrix is pinned: changing who may do what is a deliberate, reviewed change.
    #[test]
    fn golden_matrix() {
        let rows: Vec<(&str, &str)> = Permission::ALL
            .iter()
            .map(|p| (p.as_str(), p.min_role().as_str()))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("read:org", "viewer"),
                ("update:org", "owner"),
                ("delete:org", "owner"),
                ("read:members", "viewer"),
                ("manage:members", "admin"),
                ("manage:owners", "owner"),
                ("read:projects", "viewer"),
                ("write:projects", "admin"),
                ("write:environments", "admin"),
                ("read:tokens", "viewer"),
                ("manage:tokens", "admin"),
                ("read:prompts", "viewer"),
                ("publish:prompts", "builder"),
                ("promote:prompts", "admin"),
                ("read:pipelines", "viewer"),
                ("write:pipelines", "builder"),
                ("read:runs", "viewer"),
                ("write:runs", "builder"),
                ("manage:processors", "admin"),
                ("read:deployments", "viewer"),
                ("write:deployments", "builder"),
                ("decide:approvals", "reviewer"),
                ("read:marketplace", "viewer"),
                ("install:packs", "admin"),
                ("read:audit", "admin"),
                ("export:audit", "admin"),
            ]
        );
    }

    /// Roles are cumulative and names round-trip.
    #[test]
    fn roles_are_cumulative() {
        for pair in Role::ALL.windows(2) {
            let lower = pair[0].permissions();
            let higher = pair[1].permissions();
            assert!(
                lower.iter().all(|p| higher.contains(p)),
                "{:?} ⊄ {:?}",
                pair[0],
                pair[1]
            );
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(*p));
        }
        assert_eq!(Role::parse("superuser"), None);
    }
}
