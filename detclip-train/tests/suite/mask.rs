//! COCO run-length encoding of masks (`detclip_train::mask::Rle`).
use detclip_train::mask::Rle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn rle_counts_run_down_the_columns_from_a_zero_run() {
    // Rows [0 1], [1 1], [0 0]: column-major 0 1 0 | 1 1 0.
    let mask = [false, true, true, true, false, false];
    let rle = Rle::encode(&mask, 3, 2);
    assert_eq!(rle.size, [3, 2]);
    assert_eq!(rle.counts, vec![1, 1, 1, 2, 1]);
    assert_eq!(rle.area(), 3);
    assert_eq!(rle.decode(), mask);
    assert_eq!(
        rle.to_json(),
        serde_json::json!({"size": [3, 2], "counts": [1, 1, 1, 2, 1]})
    );
    // A mask that starts with a 1 opens with an empty 0-run; an empty mask is one run.
    assert_eq!(
        Rle::encode(&[true, true, false], 3, 1).counts,
        vec![0, 2, 1]
    );
    assert_eq!(Rle::encode(&[false; 4], 2, 2).counts, vec![4]);
}

#[test]
fn rle_round_trips_and_resizes_by_nearest_neighbour() {
    let mut rng = StdRng::seed_from_u64(3);
    for (h, w) in [(1, 1), (5, 7), (16, 9)] {
        let mask: Vec<bool> = (0..h * w).map(|_| rng.random_bool(0.4)).collect();
        let rle = Rle::encode(&mask, h, w);
        assert_eq!(rle.decode(), mask);
        assert_eq!(rle.area() as usize, mask.iter().filter(|&&b| b).count());
        assert_eq!(rle.resize(h, w), rle);
        // Doubling repeats every pixel 2 × 2; halving back gives the mask again.
        let big = rle.resize(2 * h, 2 * w);
        let bits = big.decode();
        for y in 0..2 * h {
            for x in 0..2 * w {
                assert_eq!(bits[y * 2 * w + x], mask[(y / 2) * w + x / 2]);
            }
        }
        assert_eq!(big.area(), 4 * rle.area());
        assert_eq!(big.resize(h, w), rle);
    }
}
