//! A cluster's replication role, in one place: what each role does, and which role each
//! operation leads to, as pure functions.
//!
//! ```text
//! role       takes replicated  ships its WAL  follows a  demote   newer epoch      promote  update-primary
//!            writes                           primary             learned
//! primary    yes               yes            no         demoted  demoted(epoch)   refused  refused
//! demoted    no                yes (drain)    no         refused  unchanged        primary  secondary, keeping aside
//! secondary  no (streamed in)  no             yes        refused  unchanged        primary  secondary
//! (none)     yes (no replication)
//! ```
//!
//! *Demoted* is a primary that stopped taking replicated writes: an operator demoted it, or it
//! learned of a newer primary (`fenced_by_epoch`), or it is a secondary in the middle of its own
//! promotion. It goes on shipping what it has, so that its secondaries can drain it, and follows
//! nobody. When it follows a primary again it *keeps aside* what its first reconciliation
//! replaces: writes the new primary may never have received ([`KeepAside`]). A refused
//! operation is the caller's mistake ([`RoleError`], a 400) and changes nothing.
//!
//! Vault's status shows a demoted primary as `mode: secondary` with `demoted: true`; so does
//! ours ([`Role::status_mode`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::definition::UnshippedRange;
use crate::core::WriteMode;

/// A cluster's replication role (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// Takes replicated writes and ships them.
    Primary,
    /// A primary that takes no replicated write and ships what it has.
    Demoted {
        /// The newer epoch that stopped it, when that is why.
        fenced_by_epoch: Option<u64>,
    },
    /// Follows the primary at the definition's `primary_cluster_addr`.
    Secondary {
        /// A former primary, until its first reconciliation is done.
        keep_aside: Option<KeepAside>,
    },
}

/// What a former primary keeps aside when it follows another: every replicated key its first
/// reconciliation replaces or deletes is copied first to the local path
/// `core/local/unshipped/e<epoch>/<path>`, so that writes the new primary never received are
/// kept for an operator to see rather than dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAside {
    /// The former primary's own epoch.
    pub epoch: u64,
    /// The entries of its own WAL that the new primary never applied, when known (from its
    /// announcement): only keys those entries wrote are kept aside; without it, every replaced
    /// key is.
    pub unshipped: Option<UnshippedRange>,
}

/// Why an operation is refused in the current role: the caller's mistake.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RoleError(String);

impl Role {
    /// The write mode of a cluster in this role.
    pub fn write_mode(self) -> WriteMode {
        match self {
            Self::Primary => WriteMode::Open,
            Self::Secondary { .. } => WriteMode::Secondary,
            Self::Demoted { .. } => WriteMode::Closed,
        }
    }

    pub fn is_active_primary(self) -> bool {
        self == Self::Primary
    }

    /// Whether this cluster serves its WAL to secondaries: an active primary, and a demoted one
    /// (so that its secondaries can drain it before one of them is promoted).
    pub fn ships_wal(self) -> bool {
        matches!(self, Self::Primary | Self::Demoted { .. })
    }

    pub fn is_secondary(self) -> bool {
        matches!(self, Self::Secondary { .. })
    }

    pub fn is_demoted(self) -> bool {
        matches!(self, Self::Demoted { .. })
    }

    pub fn fenced_by_epoch(self) -> Option<u64> {
        match self {
            Self::Demoted { fenced_by_epoch } => fenced_by_epoch,
            _ => None,
        }
    }

    pub fn keep_aside(self) -> Option<KeepAside> {
        match self {
            Self::Secondary { keep_aside } => keep_aside,
            _ => None,
        }
    }

    /// Vault's `mode` in the status: a demoted primary shows as a secondary (with `demoted`).
    pub fn status_mode(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Demoted { .. } | Self::Secondary { .. } => "secondary",
        }
    }

    /// How messages name the role.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Demoted { .. } => "secondary (demoted primary)",
            Self::Secondary { .. } => "secondary",
        }
    }

    /// `primary/demote`.
    pub fn demote(self) -> Result<Self, RoleError> {
        match self {
            Self::Primary => Ok(Self::Demoted {
                fenced_by_epoch: None,
            }),
            _ => Err(not_active_primary()),
        }
    }

    /// On learning that a primary at `epoch` exists, for a cluster at `own_epoch`: an active
    /// primary of an older epoch is fenced; any other role is unchanged (`None`).
    pub fn fence(self, own_epoch: u64, epoch: u64) -> Option<Self> {
        (self == Self::Primary && epoch > own_epoch).then_some(Self::Demoted {
            fenced_by_epoch: Some(epoch),
        })
    }

    /// `secondary/promote`, first half: the role while the promotion runs (following stops,
    /// nothing replicated is taken yet).
    pub fn begin_promotion(self) -> Result<Self, RoleError> {
        match self {
            Self::Secondary { .. } => Ok(Self::Demoted {
                fenced_by_epoch: None,
            }),
            Self::Demoted { fenced_by_epoch } => Ok(Self::Demoted { fenced_by_epoch }),
            Self::Primary => Err(RoleError(
                "only a performance secondary can be promoted".into(),
            )),
        }
    }

    /// `secondary/update-primary`: follow a primary. A former primary at `own_epoch` keeps
    /// aside what its first reconciliation replaces (only the keys of `unshipped` when known);
    /// a secondary keeps whatever it was keeping aside.
    pub fn follow(
        self,
        own_epoch: u64,
        unshipped: Option<UnshippedRange>,
    ) -> Result<Self, RoleError> {
        match self {
            Self::Demoted { .. } => Ok(Self::Secondary {
                keep_aside: Some(KeepAside {
                    epoch: own_epoch,
                    unshipped,
                }),
            }),
            Self::Secondary { keep_aside } => Ok(Self::Secondary { keep_aside }),
            Self::Primary => Err(RoleError(
                "this cluster is not a performance secondary (or a demoted primary)".into(),
            )),
        }
    }

    /// After the first reconciliation: nothing more to keep aside.
    pub fn reconciled(self) -> Self {
        match self {
            Self::Secondary { .. } => Self::Secondary { keep_aside: None },
            other => other,
        }
    }

    /// `secondary/disable` is for a secondary or a demoted primary.
    pub fn check_secondary_disable(self) -> Result<(), RoleError> {
        match self {
            Self::Primary => Err(RoleError(
                "this cluster is not a performance secondary".into(),
            )),
            _ => Ok(()),
        }
    }
}

fn not_active_primary() -> RoleError {
    RoleError("this cluster is not an active performance primary".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: Role = Role::Primary;
    const DEMOTED: Role = Role::Demoted {
        fenced_by_epoch: None,
    };
    const SECONDARY: Role = Role::Secondary { keep_aside: None };

    /// The module header's table, row by row.
    #[test]
    fn each_role_does_what_the_table_says() {
        use WriteMode::{Closed, Open, Secondary};
        for (role, writes, ships, follows) in [
            (PRIMARY, Open, true, false),
            (DEMOTED, Closed, true, false),
            (SECONDARY, Secondary, false, true),
        ] {
            assert_eq!(role.write_mode(), writes, "{role:?}");
            assert_eq!(role.ships_wal(), ships, "{role:?}");
            assert_eq!(role.is_secondary(), follows, "{role:?}");
        }
        assert_eq!(PRIMARY.status_mode(), "primary");
        assert_eq!(DEMOTED.status_mode(), "secondary");
    }

    #[test]
    fn transitions_follow_the_table() {
        assert_eq!(PRIMARY.demote(), Ok(DEMOTED));
        assert!(DEMOTED.demote().is_err());
        assert!(SECONDARY.demote().is_err());

        assert_eq!(
            PRIMARY.fence(1, 2),
            Some(Role::Demoted {
                fenced_by_epoch: Some(2)
            })
        );
        assert_eq!(PRIMARY.fence(2, 2), None, "not a newer epoch");
        assert_eq!(DEMOTED.fence(1, 2), None);
        assert_eq!(SECONDARY.fence(1, 2), None);

        assert!(PRIMARY.begin_promotion().is_err());
        assert_eq!(SECONDARY.begin_promotion(), Ok(DEMOTED));
        let fenced = Role::Demoted {
            fenced_by_epoch: Some(3),
        };
        assert_eq!(fenced.begin_promotion(), Ok(fenced));

        let range = UnshippedRange {
            after: 4,
            through: 9,
        };
        let keeping = Role::Secondary {
            keep_aside: Some(KeepAside {
                epoch: 1,
                unshipped: Some(range),
            }),
        };
        assert_eq!(DEMOTED.follow(1, Some(range)), Ok(keeping));
        assert_eq!(keeping.follow(7, None), Ok(keeping), "still keeping aside");
        assert!(PRIMARY.follow(1, None).is_err());
        assert_eq!(keeping.reconciled(), SECONDARY);
        assert_eq!(PRIMARY.reconciled(), PRIMARY);

        assert!(PRIMARY.check_secondary_disable().is_err());
        assert!(DEMOTED.check_secondary_disable().is_ok());
    }
}
