//! Vault's TTL rules for service tokens, without I/O: how long a new token lives and how far a
//! renewal may carry it. [`crate::token_api`] applies them; they are Vault's (`CalculateTTL` and
//! the token store's create handler):
//!
//! * A token's **max TTL** is the system's max TTL, lowered by the token's own
//!   `explicit_max_ttl` when that is set. It counts from the token's creation: no renewal
//!   carries a token past `creation_time + max TTL`, whatever `increment` asks for.
//! * A TTL over what is left of the max is **capped, with Vault's warning**, not refused.
//! * A new token without a TTL (or with `ttl: 0`) gets the system's **default TTL**. Only a
//!   token with the `root` policy may be created without expiry (its parent must then be root
//!   too, see `token_api`), only by a parent that does not expire itself, and even then its
//!   `explicit_max_ttl` bounds it.
//! * A child's TTL is **not** capped by its parent's remaining lifetime: in Vault a child dies
//!   with its parent instead (the token tree, in [`crate::token`]).

use thiserror::Error;

/// The system's TTL limits for tokens, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemLimits {
    /// The TTL of a token created without one.
    pub default_ttl: u64,
    /// The longest any token may live from its creation.
    pub max_ttl: u64,
}

impl SystemLimits {
    /// Vault's defaults: 768h (32 days) for both.
    pub const VAULT_DEFAULTS: Self = Self {
        default_ttl: 768 * 3600,
        max_ttl: 768 * 3600,
    };

    /// The max TTL of a token with this `explicit_max_ttl` (0: none): the lower of the two.
    pub fn max_ttl_with(self, explicit_max_ttl: u64) -> u64 {
        match explicit_max_ttl {
            0 => self.max_ttl,
            explicit => explicit.min(self.max_ttl),
        }
    }
}

/// What a token creation asks for, in seconds (0: not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    pub ttl: u64,
    pub explicit_max_ttl: u64,
    /// The new token has the `root` policy.
    pub root: bool,
    /// The creating token expires (it has a TTL).
    pub parent_expires: bool,
}

/// What a renewal works from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewRequest {
    /// `increment` (0: not given, the token's creation TTL is used).
    pub increment: u64,
    /// The TTL the token was created with.
    pub creation_ttl: u64,
    pub explicit_max_ttl: u64,
    /// Unix seconds.
    pub creation_time: u64,
}

/// A granted TTL in seconds (0: never expires) and the warnings Vault returns with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub ttl: u64,
    pub warnings: Vec<String>,
}

/// Why no TTL can be granted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TtlError {
    #[error("expiring root tokens cannot create non-expiring root tokens")]
    NonExpiringFromExpiringRoot,
    #[error("past the max TTL, cannot renew")]
    PastMaxTtl,
}

/// The TTL of a new token.
pub fn creation(limits: SystemLimits, request: CreateRequest) -> Result<Grant, TtlError> {
    if request.ttl == 0 && request.root {
        // Vault: "root tokens are still bound by explicit max TTL". Ferry also holds that
        // bound to the system's max, as for every other token.
        let ttl = match request.explicit_max_ttl {
            0 => 0,
            explicit => limits.max_ttl_with(explicit),
        };
        if ttl == 0 && request.parent_expires {
            return Err(TtlError::NonExpiringFromExpiringRoot);
        }
        return Ok(Grant {
            ttl,
            warnings: Vec::new(),
        });
    }
    let wanted = match request.ttl {
        0 => limits.default_ttl,
        ttl => ttl,
    };
    // A new token starts now: all of its max TTL is left.
    Ok(cap(wanted, limits.max_ttl_with(request.explicit_max_ttl)))
}

/// The TTL a renewal at `now` (Unix seconds) grants, counted from `now`.
pub fn renewal(limits: SystemLimits, request: RenewRequest, now: u64) -> Result<Grant, TtlError> {
    let max_ttl = limits.max_ttl_with(request.explicit_max_ttl);
    let left = request
        .creation_time
        .saturating_add(max_ttl)
        .checked_sub(now)
        .filter(|left| *left > 0)
        .ok_or(TtlError::PastMaxTtl)?;
    let wanted = match (request.increment, request.creation_ttl) {
        (0, 0) => limits.default_ttl,
        (0, creation_ttl) => creation_ttl,
        (increment, _) => increment,
    };
    Ok(cap(wanted, left))
}

/// `wanted`, or `left` with Vault's warning when `wanted` is longer.
fn cap(wanted: u64, left: u64) -> Grant {
    if wanted <= left {
        return Grant {
            ttl: wanted,
            warnings: Vec::new(),
        };
    }
    Grant {
        ttl: left,
        warnings: vec![format!(
            "TTL of {:?} exceeded the effective max_ttl of {:?}; TTL value is capped accordingly",
            human_duration(wanted),
            human_duration(left)
        )],
    }
}

/// A duration as Vault's warnings print it: Go's `Duration.String` without zero units
/// (`768h`, `1m30s`, `1h1s`).
pub fn human_duration(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let text = match (hours, minutes) {
        (0, 0) => return format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    };
    let text = text
        .strip_suffix("m0s")
        .map_or(text.clone(), |t| format!("{t}m"));
    match text.find("h0m") {
        Some(at) => format!("{}{}", &text[..=at], &text[at + 3..]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: SystemLimits = SystemLimits::VAULT_DEFAULTS;

    fn create(ttl: u64, explicit_max_ttl: u64) -> CreateRequest {
        CreateRequest {
            ttl,
            explicit_max_ttl,
            root: false,
            parent_expires: false,
        }
    }

    #[test]
    fn a_token_without_a_ttl_gets_the_default_not_forever() {
        let grant = creation(LIMITS, create(0, 0)).unwrap();
        assert_eq!(grant.ttl, 768 * 3600);
        assert!(grant.warnings.is_empty());
        assert_eq!(
            creation(LIMITS, create(0, 0)),
            creation(LIMITS, create(768 * 3600, 0))
        );
    }

    #[test]
    fn explicit_max_ttl_caps_the_creation_ttl_with_a_warning() {
        let grant = creation(LIMITS, create(3600, 600)).unwrap();
        assert_eq!(grant.ttl, 600);
        assert_eq!(
            grant.warnings,
            [
                "TTL of \"1h\" exceeded the effective max_ttl of \"10m\"; TTL value is capped accordingly"
            ]
        );
        // The default TTL too.
        assert_eq!(creation(LIMITS, create(0, 90)).unwrap().ttl, 90);
    }

    #[test]
    fn a_ttl_over_the_system_max_is_capped_not_refused() {
        let grant = creation(LIMITS, create(1000 * 3600, 0)).unwrap();
        assert_eq!(grant.ttl, LIMITS.max_ttl);
        assert_eq!(grant.warnings.len(), 1);
        // An explicit max above the system's does not lift it.
        assert_eq!(
            creation(LIMITS, create(1000 * 3600, 1000 * 3600))
                .unwrap()
                .ttl,
            LIMITS.max_ttl
        );
    }

    #[test]
    fn only_root_tokens_from_non_expiring_parents_may_never_expire() {
        let root = CreateRequest {
            root: true,
            ..create(0, 0)
        };
        assert_eq!(creation(LIMITS, root).unwrap().ttl, 0);
        let from_expiring = CreateRequest {
            parent_expires: true,
            ..root
        };
        assert_eq!(
            creation(LIMITS, from_expiring).unwrap_err().to_string(),
            "expiring root tokens cannot create non-expiring root tokens"
        );
        // Bound by explicit_max_ttl, then it may come from an expiring parent.
        let bounded = CreateRequest {
            explicit_max_ttl: 600,
            ..from_expiring
        };
        assert_eq!(creation(LIMITS, bounded).unwrap().ttl, 600);
        // A root token asking for a TTL gets it, as any token.
        let with_ttl = CreateRequest { ttl: 60, ..root };
        assert_eq!(creation(LIMITS, with_ttl).unwrap().ttl, 60);
    }

    #[test]
    fn renewal_is_capped_by_the_max_ttl_counted_from_creation() {
        let request = RenewRequest {
            increment: 3600,
            creation_ttl: 60,
            explicit_max_ttl: 600,
            creation_time: 1_000,
        };
        let grant = renewal(LIMITS, request, 1_100).unwrap();
        assert_eq!(grant.ttl, 500);
        assert_eq!(
            grant.warnings,
            [
                "TTL of \"1h\" exceeded the effective max_ttl of \"8m20s\"; TTL value is capped accordingly"
            ]
        );
        // Within the max, the increment is granted as asked.
        let short = RenewRequest {
            increment: 30,
            ..request
        };
        assert_eq!(renewal(LIMITS, short, 1_100).unwrap().ttl, 30);
        // Without an increment, the creation TTL again.
        let again = RenewRequest {
            increment: 0,
            ..request
        };
        assert_eq!(renewal(LIMITS, again, 1_100).unwrap().ttl, 60);
        // The system max, without an explicit one.
        let system = RenewRequest {
            increment: 768 * 3600,
            explicit_max_ttl: 0,
            ..request
        };
        assert_eq!(
            renewal(LIMITS, system, 1_100).unwrap().ttl,
            768 * 3600 - 100
        );
    }

    #[test]
    fn renewal_at_or_past_the_max_is_refused() {
        let request = RenewRequest {
            increment: 60,
            creation_ttl: 60,
            explicit_max_ttl: 600,
            creation_time: 1_000,
        };
        assert_eq!(renewal(LIMITS, request, 1_600), Err(TtlError::PastMaxTtl));
        assert_eq!(renewal(LIMITS, request, 5_000), Err(TtlError::PastMaxTtl));
        assert_eq!(renewal(LIMITS, request, 1_599).unwrap().ttl, 1);
    }

    #[test]
    fn durations_print_like_go_without_zero_units() {
        for (seconds, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (90, "1m30s"),
            (3600, "1h"),
            (3601, "1h1s"),
            (3660, "1h1m"),
            (768 * 3600, "768h"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    proptest! {
        #[test]
        fn a_non_root_token_always_expires_within_its_max(
            ttl in 0u64..4 * 768 * 3600,
            explicit_max_ttl in prop_oneof![Just(0u64), 1u64..4 * 768 * 3600],
            parent_expires: bool,
        ) {
            let request = CreateRequest { ttl, explicit_max_ttl, root: false, parent_expires };
            let grant = creation(LIMITS, request).unwrap();
            prop_assert!(grant.ttl > 0);
            prop_assert!(grant.ttl <= LIMITS.max_ttl_with(explicit_max_ttl));
            prop_assert_eq!(grant.warnings.is_empty(), ttl == 0 || ttl <= grant.ttl);
        }

        #[test]
        fn no_renewal_carries_a_token_past_creation_plus_max_ttl(
            increment in 0u64..4 * 768 * 3600,
            creation_ttl in 0u64..768 * 3600,
            explicit_max_ttl in prop_oneof![Just(0u64), 1u64..4 * 768 * 3600],
            creation_time in 0u64..1 << 40,
            elapsed in 0u64..4 * 768 * 3600,
        ) {
            let request = RenewRequest { increment, creation_ttl, explicit_max_ttl, creation_time };
            let deadline = creation_time + LIMITS.max_ttl_with(explicit_max_ttl);
            let now = creation_time + elapsed;
            match renewal(LIMITS, request, now) {
                Ok(grant) => {
                    prop_assert!(grant.ttl > 0);
                    prop_assert!(now + grant.ttl <= deadline);
                    if increment > 0 && now + increment <= deadline {
                        prop_assert_eq!(grant.ttl, increment);
                        prop_assert!(grant.warnings.is_empty());
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e, TtlError::PastMaxTtl);
                    prop_assert!(now >= deadline);
                }
            }
        }
    }
}
