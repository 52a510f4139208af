// Package observe reads running processes from outside, the way the
// benchmark (internal/bench) and the end-to-end suite (e2e) watch immortald
// members and etcd: a process's children, memory and CPU time from Linux's
// /proc, and the unlabelled samples of a Prometheus text page (/metrics).
// The member reads its own subtree through Children too (workload/execkind,
// to find every process of a command life). It starts, stops and signals
// nothing.
package observe
