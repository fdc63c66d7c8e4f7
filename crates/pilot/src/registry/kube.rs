//! `skiffd --kubernetes`: watches the API server (placeholder until the kube-rs source lands).
