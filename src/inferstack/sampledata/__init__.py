"""A deterministic e-commerce sample: products, users and user x category affinities."""
