"""The Ray Serve application: StreamProcessor replicas and one deployment per model."""
