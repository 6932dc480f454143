"""Step 3, detect: object detections per image (ONNX detectors, the user's predictions) as evidence of the target."""
