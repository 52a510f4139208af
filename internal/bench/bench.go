package bench

import (
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// The keyspace the bench drives, under immortald's default prefix.
const (
	prefix      = "/immortals/"
	livesPrefix = prefix + "lives/"
	agesPrefix  = prefix + "ages/"
	elecPrefix  = prefix + "elections/"
	membersPfx  = prefix + "members/"
	lockPrefix  = "/baseline/" // etcdctl lock names of the baseline
)

// bench is one run: the binaries, the etcd process, the members.
type bench struct {
	cfg     config
	ps      *procSet
	ports   portPicker
	workDir string // etcd data; removed at the end
	logDir  string // process logs; kept
	bins    Binaries
	rep     *report

	etcd       *proc
	endpoint   string // host:port of etcd's client URL
	metricsURL string
	cli        *clientv3.Client

	mu          sync.Mutex
	members     map[string]*member // by id, alive or not
	gens        map[string]int
	lastStarted time.Time // when a member last became ready
	quiesced    []float64 // seconds waited for etcd between phases
}

// keys is the keyspace the bench drives, for the registry's helpers.
var keys = func() registry.Keys {
	k, err := registry.NewKeys(prefix)
	if err != nil {
		panic(err)
	}
	return k
}()
