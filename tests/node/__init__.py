"""A real single-node Kubernetes (kubelet, kube-proxy, kube-scheduler, Docker) on top of tests/cluster."""
