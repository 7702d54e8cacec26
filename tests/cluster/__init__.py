"""Tests against the real local Kubernetes cluster (hack/cluster.sh)."""
