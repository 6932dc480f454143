"""Step 3, tag: quality scores, lighting, background, occlusion, and tags from annotations or the user."""
