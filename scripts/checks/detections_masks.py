"""Reads the masks of a `detclip detect` output with pycocotools and checks them.

Every annotation with a `segmentation` (RegionSpot's SAM masks, COCO uncompressed RLE) must
decode with `pycocotools.mask` to an array of the image's size whose pixel count equals the
annotation's `area` (which `detclip` computes itself).

    python3 scripts/checks/detections_masks.py OUT/detections.json
"""
import json
import sys

from pycocotools import mask as mask_utils


def main(path):
    data = json.load(open(path))
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    checked = 0
    for a in data["annotations"]:
        seg = a.get("segmentation")
        if seg is None:
            continue
        h, w = seg["size"]
        if (h, w) != sizes[a["image_id"]]:
            sys.exit(f"annotation {a['id']}: mask {h}x{w} on image {sizes[a['image_id']]}")
        rle = mask_utils.frPyObjects(seg, h, w)
        m = mask_utils.decode(rle)
        if m.shape != (h, w) or int(m.sum()) != a["area"] or int(mask_utils.area(rle)) != a["area"]:
            sys.exit(f"annotation {a['id']}: pycocotools area {int(m.sum())}, ours {a['area']}")
        checked += 1
    print(f"{checked} masks read by pycocotools; sizes and areas agree")


if __name__ == "__main__":
    main(sys.argv[1])
