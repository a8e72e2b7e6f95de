"""Model-side code: feature names and schemas, preprocessing, networks, training, inference."""
