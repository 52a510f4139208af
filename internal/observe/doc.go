// Package observe reads running processes from outside, the way the
// benchmark (internal/bench) and the end-to-end suite (e2e) watch immortald
// members and etcd: a process's children, memory and CPU time from Linux's
// /proc, and the unlabelled samples of a Prometheus text page (/metrics).
// It starts, stops and signals nothing.
package observe
