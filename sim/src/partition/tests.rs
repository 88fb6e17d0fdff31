use std::collections::BTreeSet;

use super::*;
use crate::dataset::label_counts;

/// 1,000 rows, 4 balanced labels, in label-sorted blocks (the worst case for dealing).
fn data() -> Dataset {
    let mut text = String::from("x,y,label\n");
    for i in 0..1000 {
        text.push_str(&format!("{i},{},{}\n", i % 7, i / 250));
    }
    Dataset::parse(&text).unwrap()
}

fn config(scheme: Scheme) -> PartitionConfig {
    PartitionConfig { scheme, clients: 8, eval_fraction: 0.2, dirichlet_alpha: 0.5, drift_at: 0.5, seed: 7 }
}

fn indices(rows: &[Row]) -> Vec<usize> {
    rows.iter().map(|row| row.index).collect()
}

#[test]
fn same_seed_same_streams_other_seed_other_streams() {
    let data = data();
    for scheme in [Scheme::Iid, Scheme::LabelSkew, Scheme::Drift] {
        let a = partition(&data, &config(scheme)).unwrap();
        let b = partition(&data, &config(scheme)).unwrap();
        assert_eq!(a.clients, b.clients, "{scheme:?}");
        assert_eq!(a.eval, b.eval, "{scheme:?}");
    }
    let a = partition(&data, &config(Scheme::LabelSkew)).unwrap();
    let c = partition(&data, &PartitionConfig { seed: 8, ..config(Scheme::LabelSkew) }).unwrap();
    assert_ne!(a.clients, c.clients);
}

#[test]
fn every_row_is_used_once_and_the_eval_split_is_disjoint() {
    let data = data();
    for scheme in [Scheme::Iid, Scheme::LabelSkew, Scheme::Drift] {
        let p = partition(&data, &config(scheme)).unwrap();
        assert_eq!(p.eval.len(), 200, "{scheme:?}");
        let eval: BTreeSet<usize> = indices(&p.eval).into_iter().collect();
        let mut seen = BTreeSet::new();
        for stream in &p.clients {
            for index in indices(stream) {
                assert!(!eval.contains(&index), "{scheme:?}: row {index} is in a stream and in the eval set");
                assert!(seen.insert(index), "{scheme:?}: row {index} dealt twice");
            }
        }
        assert_eq!(seen.len() + eval.len(), 1000, "{scheme:?}");
    }
}

#[test]
fn iid_streams_are_balanced_in_size_and_labels() {
    let p = partition(&data(), &config(Scheme::Iid)).unwrap();
    for stream in &p.clients {
        assert_eq!(stream.len(), 100);
        for count in label_counts(stream, 4) {
            assert!((10..=40).contains(&count), "{:?}", label_counts(stream, 4));
        }
    }
}

/// Mean total-variation distance between each client's label mix and the overall one.
fn skew(p: &Partition) -> f64 {
    let overall = [0.25; 4];
    let tv: f64 = p
        .clients
        .iter()
        .map(|stream| {
            let counts = label_counts(stream, 4);
            let n = stream.len() as f64;
            counts.iter().zip(overall).map(|(&c, o)| (c as f64 / n - o).abs()).sum::<f64>() / 2.0
        })
        .sum();
    tv / p.clients.len() as f64
}

#[test]
fn label_skew_actually_skews_and_more_so_for_small_alpha() {
    let data = data();
    let iid = skew(&partition(&data, &config(Scheme::Iid)).unwrap());
    let skewed = partition(&data, &config(Scheme::LabelSkew)).unwrap();
    let strong =
        skew(&partition(&data, &PartitionConfig { dirichlet_alpha: 0.05, ..config(Scheme::LabelSkew) }).unwrap());
    let mild =
        skew(&partition(&data, &PartitionConfig { dirichlet_alpha: 100.0, ..config(Scheme::LabelSkew) }).unwrap());
    assert!(iid < 0.1, "iid skew {iid}");
    assert!(skew(&skewed) > 0.25, "α = 0.5 skew {}", skew(&skewed));
    assert!(strong > skew(&skewed) && skew(&skewed) > mild, "{strong} {} {mild}", skew(&skewed));
    // Equal stream lengths whatever the skew.
    assert!(skewed.clients.iter().all(|s| s.len() == 100));
}

#[test]
fn drift_keeps_file_order_and_permutes_labels_after_the_drift_point() {
    let data = data();
    let p = partition(&data, &config(Scheme::Drift)).unwrap();
    let perm = p.drift_permutation.clone().unwrap();
    assert!(perm.iter().enumerate().all(|(old, &new)| old as u32 != new), "{perm:?}");
    for stream in &p.clients {
        assert!(indices(stream).windows(2).all(|w| w[0] < w[1]), "temporal order lost");
        let half = stream.len() / 2;
        for (i, row) in stream.iter().enumerate() {
            let original = data.rows[row.index].label;
            let expected = if i < half { original } else { perm[original as usize] };
            assert_eq!(row.label, expected);
        }
    }
    assert!(p.eval.iter().all(|row| row.label == perm[data.rows[row.index].label as usize]));
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let data = data();
    for bad in [
        PartitionConfig { clients: 0, ..config(Scheme::Iid) },
        PartitionConfig { clients: 900, ..config(Scheme::Iid) },
        PartitionConfig { eval_fraction: 1.0, ..config(Scheme::Iid) },
        PartitionConfig { dirichlet_alpha: 0.0, ..config(Scheme::LabelSkew) },
        PartitionConfig { drift_at: 1.5, ..config(Scheme::Drift) },
    ] {
        assert!(partition(&data, &bad).is_err(), "{bad:?}");
    }
    // A tiny α still deals every row.
    let p = partition(&data, &PartitionConfig { dirichlet_alpha: 1e-4, ..config(Scheme::LabelSkew) }).unwrap();
    assert_eq!(p.clients.iter().map(Vec::len).sum::<usize>(), 800);
}

/// How much the share of a stream's most frequent label differs between its two halves.
fn half_shift(stream: &[Row], classes: u32) -> f64 {
    let counts = label_counts(stream, classes);
    let top = (0..counts.len()).max_by_key(|&l| counts[l]).unwrap_or(0) as u32;
    let half = stream.len() / 2;
    let share = |rows: &[Row]| rows.iter().filter(|row| row.label == top).count() as f64 / rows.len().max(1) as f64;
    (share(&stream[..half]) - share(&stream[half..])).abs()
}

#[test]
fn label_skew_streams_are_stationary_not_drifting() {
    // 8,000 rows in label-sorted blocks: 800 rows per client, so sampling noise between halves is small.
    let mut text = String::from("x,y,label\n");
    for i in 0..8000 {
        text.push_str(&format!("{i},{},{}\n", i % 7, i / 2000));
    }
    let data = Dataset::parse(&text).unwrap();
    let config = config(Scheme::LabelSkew);
    let p = partition(&data, &config).unwrap();
    // The same dealing, before the shuffle (the path `partition` takes for label skew).
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.rows.len()).collect();
    order.shuffle(&mut rng);
    let eval_rows = (data.rows.len() as f64 * config.eval_fraction).round() as usize;
    let train: Vec<&Row> = order[eval_rows..].iter().map(|&i| &data.rows[i]).collect();
    let dealt = deal_label_skew(&train, data.classes, &config, &mut rng).unwrap();
    assert_eq!(dealt.len(), p.clients.len());
    for (shuffled, dealt) in p.clients.iter().zip(&dealt) {
        // The shuffle keeps each stream's rows: same length, same label counts.
        assert_eq!(shuffled.len(), dealt.len());
        assert_eq!(label_counts(shuffled, 4), label_counts(dealt, 4));
        let (mut a, mut b) = (indices(shuffled), indices(dealt));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(half_shift(shuffled, 4) < 0.15, "label mix drifts within a stream: {}", half_shift(shuffled, 4));
    }
    // In dealing order the leftover labels pile up at the end of the streams.
    let worst = dealt.iter().map(|s| half_shift(s, 4)).fold(0.0, f64::max);
    assert!(worst >= 0.15, "dealing order shows no drift ({worst}): this test would not catch a missing shuffle");
}
