package registry

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the prefix used when none is configured.
const DefaultPrefix = "/immortals/"

// Keys builds the keys of one immortald keyspace.
type Keys struct {
	prefix string
}

// NewKeys returns the keyspace under prefix. The prefix must be non-empty and
// end in "/", so that no two keyspaces can overlap by accident.
func NewKeys(prefix string) (Keys, error) {
	if prefix == "" {
		return Keys{}, fmt.Errorf("prefix is empty")
	}
	if !strings.HasSuffix(prefix, "/") {
		return Keys{}, fmt.Errorf("prefix %q must end in \"/\"", prefix)
	}
	return Keys{prefix: prefix}, nil
}

// Prefix returns the keyspace's prefix, with its trailing slash.
func (k Keys) Prefix() string { return k.prefix }

// Lives is the prefix of every life request.
func (k Keys) Lives() string { return k.prefix + "lives/" }

// Life is the request key of one life.
func (k Keys) Life(name string) string { return k.Lives() + name }

// Elections is the prefix of every election.
func (k Keys) Elections() string { return k.prefix + "elections/" }

// Election is the election prefix of one life, without a trailing slash, as
// concurrency.NewElection expects it.
func (k Keys) Election(name string) string { return k.Elections() + name }

// Candidacy is the election key of the member on lease in the election of
// one life: the key concurrency.Election would create for that lease.
func (k Keys) Candidacy(name string, lease int64) string {
	return k.Election(name) + "/" + strconv.FormatInt(lease, 16)
}

// Ages is the prefix of every age record.
func (k Keys) Ages() string { return k.prefix + "ages/" }

// Age is the age record key of one life.
func (k Keys) Age(name string) string { return k.Ages() + name }

// States is the prefix of every state record.
func (k Keys) States() string { return k.prefix + "states/" }

// State is the state record key of one life.
func (k Keys) State(name string) string { return k.States() + name }

// Children is the prefix of every child record.
func (k Keys) Children() string { return k.prefix + "children/" }

// Child is the child record key of one life.
func (k Keys) Child(name string) string { return k.Children() + name }

// StateQuarantines is the prefix of every quarantined state record.
func (k Keys) StateQuarantines() string { return k.prefix + "quarantine-states/" }

// StateQuarantine is where the bytes of a states/<name> value that did not
// parse are kept.
func (k Keys) StateQuarantine(name string) string { return k.StateQuarantines() + name }

// Heartbeats is the prefix of every member heartbeat.
func (k Keys) Heartbeats() string { return k.prefix + "heartbeats/" }

// Heartbeat is the heartbeat key of the member on lease.
func (k Keys) Heartbeat(lease int64) string {
	return k.Heartbeats() + strconv.FormatInt(lease, 16)
}

// HeartbeatLease returns the lease of a heartbeat key; ok is false when key
// is not one.
func (k Keys) HeartbeatLease(key string) (lease int64, ok bool) {
	rest, found := strings.CutPrefix(key, k.Heartbeats())
	if !found || rest == "" {
		return 0, false
	}
	l, err := strconv.ParseInt(rest, 16, 64)
	return l, err == nil && l > 0
}

// Quarantines is the prefix of every quarantined record.
func (k Keys) Quarantines() string { return k.prefix + "quarantine/" }

// Quarantine is where the bad bytes of ages/<name> are kept.
func (k Keys) Quarantine(name string) string { return k.Quarantines() + name }

// Members is the prefix of every member record.
func (k Keys) Members() string { return k.prefix + "members/" }

// Member is the record key of one member.
func (k Keys) Member(id string) string { return k.Members() + id }

// NameOf returns the name in key under the section prefix sec, for example
// NameOf(k.Lives(), "/immortals/lives/Adam") == "Adam".
func NameOf(sec, key string) string { return strings.TrimPrefix(key, sec) }

// ElectionName splits an election candidate key into life name and lease
// part; ok is false when key is not a candidate key of this keyspace.
func (k Keys) ElectionName(key string) (name string, ok bool) {
	rest, found := strings.CutPrefix(key, k.Elections())
	if !found {
		return "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}
