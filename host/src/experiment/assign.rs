//! Variant assignment: weighted rendezvous hashing (highest random weight).
//!
//! For user `u` in experiment `e`, every variant `v` with weight `w` gets the score
//! `-w / ln(h)`, where `h` is the first 53 bits of SHA-256(`"pipehost-ab\0" e "\0" v "\0" u`)
//! mapped into (0, 1); the highest score wins. Equivalently each variant draws an
//! exponential "arrival time" `-ln(h) / w` and the earliest wins, so variant `v` is chosen with
//! probability exactly `w / Σw`, independently for each user.
//!
//! Why this scheme: it needs no state (every replica and every restart assigns alike), and
//! changing a weight moves as few users as possible: raising `v`'s weight only moves users *to*
//! `v`; lowering it only moves `v`'s users away; adding a variant only takes users to it; and
//! removing one only moves its own users. (A "hash mod 10000 into weight buckets" scheme moves
//! users between untouched variants when an earlier bucket changes size.) The variant's *name*
//! is hashed, not its pipeline, so repointing a variant at a new pipeline keeps its users.

use sha2::{Digest, Sha256};

use super::Variant;

/// A point in (0, 1), uniform, from the hash of (experiment, variant, user).
fn unit_hash(experiment: &str, variant: &str, user: &str) -> f64 {
    let mut h = Sha256::new();
    for part in ["pipehost-ab", experiment, variant] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(user.as_bytes());
    let digest = h.finalize();
    let x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    // 53 bits, offset by half a step: never 0 or 1.
    ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The index of the variant `user` gets. `variants` must not be empty.
pub fn assign(experiment: &str, variants: &[Variant], user: &str) -> usize {
    let mut best = (f64::NEG_INFINITY, 0);
    for (i, v) in variants.iter().enumerate() {
        let score = -v.weight / unit_hash(experiment, &v.name, user).ln();
        if score > best.0 {
            best = (score, i);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variants(weights: &[(&str, f64)]) -> Vec<Variant> {
        weights
            .iter()
            .map(|(n, w)| Variant { name: (*n).into(), pipeline: (*n).into(), weight: *w })
            .collect()
    }

    fn names(vs: &[Variant], users: usize) -> Vec<String> {
        (0..users).map(|u| vs[assign("exp", vs, &format!("user-{u}"))].name.clone()).collect()
    }

    /// The scheme is a contract (replicas, restarts, other implementations), so its output
    /// must not drift: these values were computed independently with Python's hashlib
    /// (`-w / math.log(h)`, highest wins).
    #[test]
    fn matches_an_independent_computation() {
        assert_eq!(unit_hash("exp", "a", "user-0"), 0.6686337418474122);
        let vs = variants(&[("a", 1.0), ("b", 3.0)]);
        let got: String =
            (0..24).map(|u| vs[assign("exp", &vs, &format!("user-{u}"))].name.clone()).collect();
        assert_eq!(got, "bbbbaabbbbbaabbbabbbbaab");
    }

    #[test]
    fn raising_one_weight_only_moves_users_to_it() {
        let before = names(&variants(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]), 10_000);
        let after = names(&variants(&[("a", 1.0), ("b", 2.0), ("c", 1.0)]), 10_000);
        let mut moved = 0;
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                assert_eq!(y, "b", "a user moved from {x} to {y}");
                moved += 1;
            }
        }
        // b goes from 1/3 to 1/2 of the users: 1/6 must move, and no more.
        let expected = 10_000.0 / 6.0;
        assert!((f64::from(moved) - expected).abs() < 4.0 * (expected * (5.0 / 6.0)).sqrt(), "{moved}");
    }

    #[test]
    fn lowering_one_weight_only_moves_its_users() {
        let before = names(&variants(&[("a", 3.0), ("b", 3.0), ("c", 3.0)]), 10_000);
        let after = names(&variants(&[("a", 3.0), ("b", 1.0), ("c", 3.0)]), 10_000);
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                assert_eq!(x, "b", "a user moved from {x} to {y}");
            }
        }
    }

    #[test]
    fn adding_a_variant_only_takes_users_to_it() {
        let before = names(&variants(&[("a", 1.0), ("b", 1.0)]), 10_000);
        let after = names(&variants(&[("a", 1.0), ("b", 1.0), ("new", 1.0)]), 10_000);
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || y == "new", "a user moved from {x} to {y}");
        }
    }
}
