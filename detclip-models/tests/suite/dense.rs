//! The dense heads' shared post-processing (`dense`): threshold, top-k, clipping to
//! the image, class-wise NMS, the detection cap, and the shape check.

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;
use detclip_models::dense::{DenseTestConfig, dense_detections};

fn config(pre_nms_top_k: usize, max_detections: usize) -> DenseTestConfig {
    DenseTestConfig {
        short_side: 64,
        max_long: None,
        pre_nms_top_k,
        nms_iou: 0.5,
        max_detections,
    }
}

/// One image, 3 anchors × 2 concepts. Anchors 0 and 1 overlap (IoU 0.9); anchor 2 sticks out
/// of the 40×50 (h×w) image.
fn inputs<B: Backend>(device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let scores = vec![0.9, 0.1, 0.8, 0.7, 0.05, 0.6];
    let boxes = vec![
        0.0, 0.0, 10.0, 10.0, //
        0.0, 0.0, 10.0, 9.0, //
        -5.0, 30.0, 60.0, 45.0,
    ];
    (
        Tensor::from_data(TensorData::new(scores, [1, 3, 2]), device),
        Tensor::from_data(TensorData::new(boxes, [1, 3, 4]), device),
    )
}

backend_test! {
    fn dense_detections_threshold_nms_per_concept_and_clip<B>(device) {
        let (scores, boxes) = inputs::<B::InnerBackend>(device);
        let dets = dense_detections(scores, boxes, &[(40, 50)], 0.2, &config(100, 10)).unwrap();
        assert_eq!(dets.len(), 1);
        let got: Vec<(usize, f32)> = dets[0].classes.iter().copied().zip(dets[0].scores.iter().copied()).collect();
        // Concept 0: anchor 0 (0.9) suppresses anchor 1 (0.8). Concept 1: anchor 1 (0.7) and
        // anchor 2 (0.6) do not overlap; 0.1 and 0.05 are under the threshold.
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (1, 0.6)]);
        assert_eq!(dets[0].boxes[2], [0.0, 30.0, 50.0, 40.0], "clipped to the image");
    }
}

backend_test! {
    fn dense_detections_keep_the_top_k_then_cap<B>(device) {
        let (scores, boxes) = inputs::<B::InnerBackend>(device);
        // Top 2 before NMS: (anchor 0, concept 0) and (anchor 1, concept 0); NMS keeps one.
        let dets = dense_detections(scores.clone(), boxes.clone(), &[(40, 50)], 0.0, &config(2, 10))
            .unwrap();
        assert_eq!(dets[0].scores.len(), 1);
        let dets = dense_detections(scores, boxes, &[(40, 50)], 0.0, &config(100, 2)).unwrap();
        let got = dets[0].scores.clone();
        assert_eq!(got, vec![0.9, 0.7]);
    }
}

backend_test! {
    fn dense_detections_refuse_mismatched_shapes_and_settings<B>(device) {
        let (scores, boxes) = inputs::<B::InnerBackend>(device);
        let err = dense_detections(scores.clone(), boxes.clone().narrow(1, 0, 2), &[(40, 50)], 0.2, &config(10, 10));
        assert!(matches!(err, Err(DetError::Shape { .. })), "{err:?}");
        let err = dense_detections(scores, boxes, &[(40, 50), (40, 50)], 0.2, &config(10, 10));
        assert!(matches!(err, Err(DetError::Shape { .. })), "{err:?}");
        assert!(config(0, 10).validate().is_err());
        let mut c = config(10, 10);
        c.nms_iou = 1.5;
        assert!(c.validate().is_err());
    }
}
