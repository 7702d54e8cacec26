"""Helpers and fixtures shared by the tests, the benchmarks and nothing else: real servers on loopback
(servers), the local cluster (cluster, cluster_operator, fake_kubelet) and the pytest fixtures (fixtures)."""
