"""Offline checks of deploy/ (manifests, compose, Prometheus, Grafana, Dockerfile) and docs."""
