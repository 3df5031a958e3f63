"""A real single-node Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for tests."""
