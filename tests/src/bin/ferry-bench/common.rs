//! Small helpers shared by the benchmarks: sizes, key-count labels, medians, percentiles,
//! values to write.

const VALUE_BYTES: usize = 256;
pub const GIB: u64 = 1 << 30;

/// `20k`, `1M`, `1500`.
pub fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.checked_rem(1_000_000) == Some(0) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.checked_rem(1_000) == Some(0) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The `p`th percentile (0..=1) of `sorted` by nearest rank; `None` when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// A 256-byte value that differs per `seed` (ciphertext-like: no structure to exploit).
pub fn value_for(seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x5EED_F3A1_BE7C_0DE5;
    let mut out = Vec::with_capacity(VALUE_BYTES);
    while out.len() < VALUE_BYTES {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(VALUE_BYTES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_medians() {
        assert_eq!(count_label(20_000), "20k");
        assert_eq!(count_label(1_000_000), "1M");
        assert_eq!(count_label(1_500), "1500");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(value_for(1).len(), VALUE_BYTES);
        assert_ne!(value_for(1), value_for(2));
    }
}
