"""Step 5, export: the manifest, images and metrics (step), COCO and YOLO files (formats), the manifest reader."""
