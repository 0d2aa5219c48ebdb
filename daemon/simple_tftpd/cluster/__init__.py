"""Site clustering on etcd: membership, leader, replicated content-addressed files."""
