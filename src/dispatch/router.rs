//! Choosing a provider: weighted random choice among the candidates.

/// Picks one candidate with probability proportional to its weight.
///
/// Candidates with weight 0 are never picked; `None` when no candidate has a
/// positive weight. Takes any iterator that can be cloned (a slice's
/// `.iter().copied()`, or a `.map()` over the providers) and walks it twice,
/// so it never allocates on the hot path.
pub fn pick_weighted<T, I>(candidates: I, rng: &mut fastrand::Rng) -> Option<T>
where
    T: Copy,
    I: IntoIterator<Item = (T, u32)>,
    I::IntoIter: Clone,
{
    let iter = candidates.into_iter();
    // u64: the sum of many u32 weights can exceed u32::MAX.
    let total: u64 = iter.clone().map(|(_, w)| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.u64(0..total);
    let mut last = None;
    for (candidate, weight) in iter {
        let weight = u64::from(weight);
        if point < weight {
            return Some(candidate);
        }
        point -= weight;
        if weight > 0 {
            last = Some(candidate);
        }
    }
    // Only reachable if the second pass saw smaller weights than the first
    // (an iterator whose clones disagree); still answer with a valid choice.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_none() {
        let mut rng = fastrand::Rng::with_seed(1);
        let none: [(u8, u32); 0] = [];
        assert_eq!(pick_weighted(none, &mut rng), None);
    }

    #[test]
    fn all_zero_weights_is_none() {
        let mut rng = fastrand::Rng::with_seed(1);
        let c = [("a", 0), ("b", 0)];
        for _ in 0..100 {
            assert_eq!(pick_weighted(c.iter().copied(), &mut rng), None);
        }
    }

    #[test]
    fn single_candidate_is_always_chosen() {
        let mut rng = fastrand::Rng::with_seed(2);
        for w in [1, 7, u32::MAX] {
            for _ in 0..1_000 {
                assert_eq!(pick_weighted([("only", w)], &mut rng), Some("only"));
            }
        }
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let mut rng = fastrand::Rng::with_seed(3);
        // Zero weights at the start, middle and end.
        let c = [("z0", 0), ("a", 1), ("z1", 0), ("b", 5), ("z2", 0)];
        for _ in 0..50_000 {
            let got = pick_weighted(c.iter().copied(), &mut rng);
            assert!(matches!(got, Some("a" | "b")), "{got:?}");
        }
    }

    #[test]
    fn weights_one_two_three_give_matching_frequencies() {
        let mut rng = fastrand::Rng::with_seed(0x5EED);
        let c = [(0usize, 1), (1, 2), (2, 3)];
        let n = 100_000;
        let mut counts = [0u32; 3];
        for _ in 0..n {
            let i = pick_weighted(c.iter().copied(), &mut rng).expect("positive weights");
            counts[i] += 1;
        }
        for (i, expected) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
            let freq = f64::from(counts[i]) / f64::from(n);
            assert!(
                (freq - expected).abs() < 0.015,
                "candidate {i}: {freq} vs {expected}"
            );
        }
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let mut rng = fastrand::Rng::with_seed(4);
        let c = [(0usize, u32::MAX), (1, u32::MAX), (2, u32::MAX)];
        let mut seen = [false; 3];
        for _ in 0..1_000 {
            let i = pick_weighted(c.iter().copied(), &mut rng).expect("positive weights");
            seen[i] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn works_over_a_lazy_map_without_collecting() {
        struct Provider {
            name: &'static str,
            weight: u32,
            healthy: bool,
        }
        let providers = [
            Provider {
                name: "down",
                weight: 10,
                healthy: false,
            },
            Provider {
                name: "up",
                weight: 1,
                healthy: true,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..1_000 {
            let candidates = providers
                .iter()
                .map(|p| (p.name, if p.healthy { p.weight } else { 0 }));
            assert_eq!(pick_weighted(candidates, &mut rng), Some("up"));
        }
    }
}
