//go:build e2e

// Package e2e runs immortald end to end: real daemons in containers against a
// real three-member etcd cluster, hurt the way production hurts them (SIGKILL,
// SIGTERM, freezes, network cuts, etcd members going away), while an invariant
// checker watches the whole keyspace.
//
// Run it with `make e2e`, which builds the images first, or directly:
//
//	go test -tags e2e -count=1 -timeout 20m ./e2e/...
//
// Backends, chosen by IMMORTALD_E2E_BACKEND:
//
//	docker (default)  containers from immortald:dev and immortald-etcd:dev on a
//	                  private network per test; needs only the docker CLI.
//	kind              the manifests under deploy/ in a kind cluster, through
//	                  kubectl; selected explicitly, skipped without kind/kubectl.
//
// Without a Docker engine the tests skip, unless CI is set: then they fail.
//
// Other knobs:
//
//	IMMORTALD_E2E_KEEP=1       leave containers and networks behind for a look
//	IMMORTALD_E2E_LOGS=1       save every container's log even when a test passes
//	IMMORTALD_E2E_LOG_LEVEL    the daemons' --log-level (default info)
//	IMMORTALD_E2E_REBUILD=1    rebuild the images even when they exist
//	IMMORTALD_E2E_ETCD_VICTIM=follower  TestEtcdMemberDown kills a follower,
//	                           not the leader
//	IMMORTALD_E2E_KIND_CLUSTER, IMMORTALD_E2E_MANIFESTS  for the kind backend
//	IMMORTALD_E2E_NODE_LOST_ETCD_LEADER=1  TestKindNodeLost moves the etcd
//	                           leader to the node it loses (its worst case)
//
// When a test fails, every container's log and the checker's timeline are
// saved under e2e/logs/<test>/. Each scenario logs what it measured in one
// greppable line:
//
//	E2E scenario=kill lives=50 failover_ms=2345 age_loss_ms=870 ...
package e2e
