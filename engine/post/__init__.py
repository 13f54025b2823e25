"""Delivery: encode, watermark, NSFW gate, content credentials."""
