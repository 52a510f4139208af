// Package bench measures immortald against real processes on loopback, and
// the do-it-yourself baseline (one `etcdctl lock` process per life) against
// the same etcd, in one run. cmd/immortalbench is its command line:
//
//	go run ./cmd/immortalbench [-quick] [-check] [-out FILE]
//
// It builds immortald, etcd and etcdctl (or takes them from -immortald,
// -etcd, -etcdctl), starts one etcd and immortald members as processes,
// drives them as a user would (etcd puts, SIGTERM, SIGKILL) and observes
// them only through etcd. It prints a table and, as its last line, one JSON
// object with every figure; before it, each target with its figure (-check
// makes a missed one exit 1). Every process it starts is in its own process
// group and is killed on exit and on Ctrl-C; the processes' logs are kept.
package bench
