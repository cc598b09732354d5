//! Batching pads to a multiple of 32 with a pixel mask and keeps per-image boxes.

use detclip_core::data::{ImageSource, Instance, Prepared, Sample, collate};

use crate::harness::to_vec;

fn prepared(key: &str, w: u32, h: u32, boxes: &[[f32; 4]]) -> Prepared {
    let image = image::RgbImage::new(w, h);
    let mut s = Sample::new(key, ImageSource::Memory(image.into()), w, h);
    let c = s.concept_index("thing", None);
    for &bbox in boxes {
        s.instances.push(Instance {
            bbox,
            concepts: vec![c],
            crowd: false,
            score: None,
        });
    }
    // Pixel (c, y, x) of image `key` holds a value that names it.
    let tag = key.len() as f32 * 1000.0;
    let pixels = (0..3 * w * h).map(|i| tag + i as f32).collect();
    Prepared { pixels, sample: s }
}

backend_test! {
    fn collate_pads_to_32_with_mask_and_boxes<B>(device) {
        let a = prepared("a", 50, 40, &[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]);
        let b = prepared("bb", 33, 70, &[]);
        let (pa, pb) = (a.pixels.clone(), b.pixels.clone());
        let batch = collate::<B>(vec![a, b], 32, device).unwrap();
        assert_eq!(batch.images.dims(), [2, 3, 96, 64]);
        assert_eq!(batch.mask.dims(), [2, 96, 64]);
        assert_eq!(batch.image_sizes, [(40, 50), (70, 33)]);
        let images = to_vec(batch.images.clone());
        // Bool storage differs by backend (u8 on ndarray, u32 on wgpu): read through Int.
        let mask: Vec<bool> = batch.mask.clone().int().into_data().convert::<i64>().to_vec::<i64>().unwrap().into_iter().map(|v| v != 0).collect();
        let (ph, pw) = (96, 64);
        for (n, (h, w, src)) in [(40, 50, &pa), (70, 33, &pb)].into_iter().enumerate() {
            for y in 0..ph {
                for x in 0..pw {
                    let inside = y < h && x < w;
                    assert_eq!(mask[(n * ph + y) * pw + x], inside, "mask {n} ({y}, {x})");
                    for c in 0..3 {
                        let got = images[((n * 3 + c) * ph + y) * pw + x];
                        let want = if inside { src[(c * h + y) * w + x] } else { 0.0 };
                        assert_eq!(got, want, "image {n} c{c} ({y}, {x})");
                    }
                }
            }
        }
        assert_eq!(batch.boxes[0].dims(), [2, 4]);
        assert_eq!(to_vec(batch.boxes[0].clone()), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(batch.boxes[1].dims(), [0, 4]);
        assert_eq!(batch.samples[1].key, "bb");
        // An exact multiple is not padded further; no images is an error.
        let c = collate::<B>(vec![prepared("c", 64, 32, &[])], 32, device).unwrap();
        assert_eq!(c.images.dims(), [1, 3, 32, 64]);
        assert!(collate::<B>(Vec::new(), 32, device).is_err());
    }
}
