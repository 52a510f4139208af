//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Checkpoint is one effective checkpoint of a life: an age record as written
// under P ages/<name>, or such a record carried forward by a heartbeat of the
// lease it runs on (Beat), with the revision that wrote it.
//
// A running record (Lease set) does not change while the life runs: its
// holder's heartbeat, P heartbeats/<lease-hex>, carries it forward, so the
// life's age at a heartbeat is age_ms + (heartbeat clock_ms - record
// clock_ms), when the heartbeat's clock is the larger. Each heartbeat is a
// checkpoint of every life that runs on its lease; once a record is final
// (Lease 0: handed off or stopped), its age_ms is the life's age.
type Checkpoint struct {
	LifeID      int64     `json:"life_id"`
	AgeMS       int64     `json:"age_ms"`
	Incarnation int64     `json:"incarnation"`
	Holder      string    `json:"holder"`
	HolderRev   int64     `json:"holder_rev"`
	Time        time.Time `json:"time"`
	Lease       int64     `json:"lease,omitempty"`    // the holder's session lease while the life runs; 0: final
	ClockMS     int64     `json:"clock_ms,omitempty"` // the holder's heartbeat clock when age_ms was taken

	Rev  int64     `json:"-"` // etcd revision of the write (of the heartbeat, when Beat)
	Seen time.Time `json:"-"` // when the checker received it
	Beat bool      `json:"-"` // carried forward by the heartbeat at Rev, not a write of ages/<name>
}

// Running reports whether the record is of a life that runs on Lease.
func (cp Checkpoint) Running() bool { return cp.Lease != 0 }

// carried returns cp carried forward to the heartbeat b of its lease; moved
// is false when cp is final or b is not newer than cp.
func (cp Checkpoint) carried(b heartbeat) (out Checkpoint, moved bool) {
	if !cp.Running() || b.ClockMS <= cp.ClockMS {
		return cp, false
	}
	cp.AgeMS += b.ClockMS - cp.ClockMS
	cp.ClockMS = b.ClockMS
	cp.Time = b.Time
	return cp, true
}

// heartbeat is one member heartbeat as written under P heartbeats/<lease-hex>.
type heartbeat struct {
	Member  string    `json:"member"`
	ClockMS int64     `json:"clock_ms"`
	Time    time.Time `json:"time"`

	Rev int64 `json:"-"`
}

func parseHeartbeat(b []byte) (heartbeat, error) {
	var h heartbeat
	if err := json.Unmarshal(b, &h); err != nil {
		return h, err
	}
	switch {
	case h.Member == "":
		return h, errors.New("member is empty")
	case h.ClockMS < 0:
		return h, fmt.Errorf("clock_ms %d is negative", h.ClockMS)
	case h.Time.IsZero():
		return h, errors.New("time is missing")
	}
	return h, nil
}

func parseCheckpoint(b []byte) (Checkpoint, error) {
	var c Checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return c, err
	}
	switch {
	case c.LifeID <= 0:
		return c, fmt.Errorf("life_id %d is not positive", c.LifeID)
	case c.Incarnation <= 0:
		return c, fmt.Errorf("incarnation %d is not positive", c.Incarnation)
	case c.AgeMS < 0:
		return c, fmt.Errorf("age_ms %d is negative", c.AgeMS)
	case c.Holder == "":
		return c, errors.New("holder is empty")
	case c.HolderRev <= 0:
		return c, fmt.Errorf("holder_rev %d is not positive", c.HolderRev)
	case c.Time.IsZero():
		return c, errors.New("time is missing")
	case c.Lease < 0 || c.ClockMS < 0:
		return c, fmt.Errorf("lease %d or clock_ms %d is negative", c.Lease, c.ClockMS)
	}
	return c, nil
}

// Candidate is one election key under P elections/<name>/.
type Candidate struct {
	Key    string
	Rev    int64 // CreateRevision: the lowest one is the holder
	Member string
}

// validLife is the contract's rule for what may run, written independently of
// the daemon's code: a name is 1..128 bytes of UTF-8 without "/", white space
// or control characters; options are empty or a JSON object with only
// "labels" (string to string) and "kind" (a kind's name; whether a member
// declares it is not the checker's business).
func validLife(name string, value []byte) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > 128:
		return errors.New("name over 128 bytes")
	case !utf8.ValidString(name):
		return errors.New("name not UTF-8")
	case name == "." || name == "..":
		return errors.New("dot name")
	}
	for _, r := range name {
		if r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("bad character %q in name", r)
		}
	}
	if len(bytes.TrimSpace(value)) == 0 {
		return nil
	}
	var o struct {
		Labels map[string]string `json:"labels"`
		Kind   string            `json:"kind"`
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if bytes.TrimSpace(value)[0] != '{' {
		return errors.New("options not a JSON object")
	}
	if err := dec.Decode(&o); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

type lifeState struct {
	id        int64 // CreateRevision of lives/<name>
	valid     bool
	everValid bool      // valid at some revision: it may have run
	since     time.Time // when the checker first saw this life wanted
}

// Checker watches the whole keyspace of one cluster in revision order and
// records every broken invariant:
//
//   - an age record that does not parse (unless the test wrote it on purpose);
//   - a checkpoint whose holder_rev is not the CreateRevision of the election
//     key that is the holder (the lowest one) at that very revision, or whose
//     holder is not that key's member: a write by a stale holder;
//   - a checkpoint of a life id that is not the current one of lives/<name>;
//   - an age or incarnation that goes down for the same life id, and a new
//     holder that does not start a new incarnation;
//   - an age that grows more than the holder's clock says passed between
//     two checkpoints (time counted that the life did not run);
//   - a heartbeat applied for a lease whose member record (members/<id>, on
//     that lease) is gone or on another lease: a stale heartbeat, which makes
//     lives older that nobody runs; a heartbeat whose clock goes back, or
//     that does not parse; a heartbeat that carries forward a life whose
//     holder at that revision is not its record's holder; a heartbeat deleted
//     while a wanted life's running record still counts on it;
//   - a wanted, valid life without a fresh checkpoint for longer than the
//     bound (availability), unless suspended;
//   - a write of a command life's state (states/<name>) or of its child
//     status (children/<name>) that does not parse, is not of the current
//     life, or is not fenced by the holder's election key at its revision,
//     or whose fencing token goes down.
//
// Ages are effective ones: each heartbeat is a checkpoint of every life whose
// record runs on its lease (see Checkpoint), and every check above, History,
// Latest, Running and Handoff use those checkpoints, not the raw records.
// The fold is written here, independently of the daemon's registry package.
//
// One watch on the prefix gives every key in one total order, so the holder
// at the revision of each write is known exactly, not guessed from timing.
type Checker struct {
	t      testing.TB
	cli    *clientv3.Client
	prefix string
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	rev        int64
	lives      map[string]*lifeState
	cands      map[string]map[string]Candidate
	holder     map[string]Candidate    // last holder logged, per life
	hist       map[string][]Checkpoint // effective checkpoints, oldest first
	recs       map[string]Checkpoint   // the record ages/<name> holds now, if it was accepted
	beats      map[int64]heartbeat     // the last accepted heartbeat of each lease
	quarantine map[string][]byte
	garbageOK  map[string]bool
	garbage    map[string][][]byte
	members    map[string]int64        // member id -> the lease members/<id> is on
	states     map[string][]StateWrite // accepted writes of states/<name>, oldest first
	lastToken  map[string]StateWrite   // by "states/<name>" and "children/<name>": the last accepted write
	bound      time.Duration
	suspended  bool
	resumed    time.Time
	flagged    map[string]time.Time
	violations []string
	reported   int
	timeline   []string
	watchErrs  int
}

// StartChecker reads the keyspace under prefix and watches it from the next
// revision. bound is how long a wanted life may go without a checkpoint. The
// checker stops, and reports what it found, when the test ends.
func StartChecker(t testing.TB, cli *clientv3.Client, prefix string, bound time.Duration) *Checker {
	t.Helper()
	return startChecker(t, cli, prefix, bound, true)
}

// startChecker is StartChecker; with fail false it only records violations,
// for the checker's own test.
func startChecker(t testing.TB, cli *clientv3.Client, prefix string, bound time.Duration, fail bool) *Checker {
	t.Helper()
	c := &Checker{
		t: t, cli: cli, prefix: prefix, done: make(chan struct{}),
		lives: map[string]*lifeState{}, cands: map[string]map[string]Candidate{},
		holder: map[string]Candidate{}, hist: map[string][]Checkpoint{},
		recs: map[string]Checkpoint{}, beats: map[int64]heartbeat{},
		quarantine: map[string][]byte{}, garbageOK: map[string]bool{}, garbage: map[string][][]byte{},
		members: map[string]int64{}, bound: bound, flagged: map[string]time.Time{},
		states: map[string][]StateWrite{}, lastToken: map[string]StateWrite{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		t.Fatalf("checker: initial read of %s: %v", prefix, err)
	}
	now := time.Now()
	c.rev = resp.Header.Revision
	// What is there already: requests, candidates and members first, then
	// the heartbeats and age records, taken as they are (how they were
	// written before the checker started cannot be judged), each record
	// carried forward by its lease's heartbeat.
	for _, kv := range resp.Kvs {
		// State records, like age records, cannot be judged after the fact.
		if !strings.HasPrefix(string(kv.Key), prefix+"ages/") && !strings.HasPrefix(string(kv.Key), prefix+"heartbeats/") &&
			!strings.HasPrefix(string(kv.Key), prefix+"states/") && !strings.HasPrefix(string(kv.Key), prefix+"children/") {
			c.apply(mvccpb.PUT, kv, now)
		}
	}
	for _, kv := range resp.Kvs {
		rest, ok := strings.CutPrefix(string(kv.Key), prefix+"heartbeats/")
		if !ok {
			continue
		}
		l, err := strconv.ParseInt(rest, 16, 64)
		if b, perr := parseHeartbeat(kv.Value); err == nil && perr == nil {
			b.Rev = kv.ModRevision
			c.beats[l] = b
		}
	}
	for _, kv := range resp.Kvs {
		name, ok := strings.CutPrefix(string(kv.Key), prefix+"ages/")
		if !ok {
			continue
		}
		if rec, err := parseCheckpoint(kv.Value); err == nil {
			rec.Rev, rec.Seen = kv.ModRevision, now
			c.recs[name] = rec
			c.hist[name] = append(c.hist[name], c.effectiveLocked(rec))
		}
	}
	wctx, wcancel := context.WithCancel(context.Background())
	c.cancel = wcancel
	wch := cli.Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(c.rev+1), clientv3.WithPrevKV())
	go c.watch(wctx, wch)
	go c.monitor(wctx)
	t.Cleanup(func() {
		c.Stop()
		if fail {
			c.Check(t)
		}
		if keepLogs(t) {
			writeLog(t, "checker-timeline", c.Timeline())
		}
	})
	return c
}

func (c *Checker) watch(ctx context.Context, wch clientv3.WatchChan) {
	defer close(c.done)
	for {
		for resp := range wch {
			if resp.CompactRevision != 0 {
				c.mu.Lock()
				c.violateLocked("watch compacted at %d: the checker missed events", resp.CompactRevision)
				c.mu.Unlock()
				return
			}
			if err := resp.Err(); err != nil {
				c.mu.Lock()
				c.watchErrs++
				c.eventLocked("watch error: %v", err)
				c.mu.Unlock()
				continue
			}
			now := time.Now()
			c.mu.Lock()
			for _, ev := range resp.Events {
				c.apply(ev.Type, ev.Kv, now)
			}
			c.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		// The channel closes when the watch lost its leader (WithRequireLeader):
		// watch again from the next revision, so nothing is missed.
		c.mu.Lock()
		from := c.rev + 1
		c.eventLocked("watch closed; watching again from revision %d", from)
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		wch = c.cli.Watch(clientv3.WithRequireLeader(ctx), c.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())
	}
}

// apply folds one key event into the model, in revision order. The caller
// holds mu (or is the constructor).
func (c *Checker) apply(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue, now time.Time) {
	key := string(kv.Key)
	rest, ok := strings.CutPrefix(key, c.prefix)
	if !ok {
		return
	}
	section, name, _ := strings.Cut(rest, "/")
	if kv.ModRevision > c.rev {
		c.rev = kv.ModRevision
	}
	switch section {
	case "lives":
		c.applyLife(typ, name, kv, now)
	case "elections":
		c.applyElection(typ, name, key, kv)
	case "ages":
		c.applyAge(typ, name, kv, now)
	case "heartbeats":
		c.applyHeartbeat(typ, name, kv, now)
	case "states", "children":
		c.applyState(typ, section, name, kv, now)
	case "quarantine":
		if typ == mvccpb.PUT {
			c.quarantine[name] = append([]byte(nil), kv.Value...)
			c.eventLocked("rev %d: quarantine/%s = %q", kv.ModRevision, name, kv.Value)
		} else {
			delete(c.quarantine, name)
		}
	case "members":
		if typ == mvccpb.PUT {
			if l, ok := c.members[name]; !ok || l != kv.Lease {
				c.eventLocked("rev %d: member %s registered on lease %x", kv.ModRevision, name, kv.Lease)
			}
			c.members[name] = kv.Lease
		} else {
			c.eventLocked("rev %d: member %s gone", kv.ModRevision, name)
			delete(c.members, name)
		}
	}
}

func (c *Checker) applyLife(typ mvccpb.Event_EventType, name string, kv *mvccpb.KeyValue, now time.Time) {
	if typ == mvccpb.DELETE {
		delete(c.lives, name)
		delete(c.flagged, name)
		c.eventLocked("rev %d: life %q deleted", kv.ModRevision, name)
		return
	}
	err := validLife(name, kv.Value)
	l := c.lives[name]
	if l == nil || l.id != kv.CreateRevision {
		l = &lifeState{id: kv.CreateRevision, since: now}
		c.lives[name] = l
	}
	wasValid := l.valid
	l.valid = err == nil
	if l.valid && !wasValid {
		l.since = now // wanted to run from now on
	}
	l.everValid = l.everValid || l.valid
	c.eventLocked("rev %d: life %q wanted (life id %d, valid=%v %v)", kv.ModRevision, name, l.id, l.valid, err)
}

func (c *Checker) applyElection(typ mvccpb.Event_EventType, rest, key string, kv *mvccpb.KeyValue) {
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		c.violateLocked("rev %d: election key %q is not <name>/<lease>", kv.ModRevision, key)
		return
	}
	name := rest[:i]
	m := c.cands[name]
	if m == nil {
		m = map[string]Candidate{}
		c.cands[name] = m
	}
	if typ == mvccpb.DELETE {
		delete(m, key)
	} else {
		m[key] = Candidate{Key: key, Rev: kv.CreateRevision, Member: string(kv.Value)}
	}
	h, ok := c.holderLocked(name)
	if prev := c.holder[name]; prev.Key != h.Key {
		if ok {
			c.eventLocked("rev %d: holder of %s is now %s (key rev %d), was %q", kv.ModRevision, name, h.Member, h.Rev, prev.Member)
		} else {
			c.eventLocked("rev %d: %s has no candidate left, was held by %q", kv.ModRevision, name, prev.Member)
		}
		c.holder[name] = h
	}
}

func (c *Checker) applyAge(typ mvccpb.Event_EventType, name string, kv *mvccpb.KeyValue, now time.Time) {
	if typ == mvccpb.DELETE {
		delete(c.recs, name) // nothing left for a heartbeat to carry forward
		c.eventLocked("rev %d: ages/%s deleted", kv.ModRevision, name)
		return
	}
	rec, err := parseCheckpoint(kv.Value)
	if err != nil {
		// No record a successor could resume from: until one is written
		// again, heartbeats are no checkpoint of this life.
		delete(c.recs, name)
		if c.garbageOK[name] {
			c.garbage[name] = append(c.garbage[name], append([]byte(nil), kv.Value...))
			c.eventLocked("rev %d: ages/%s = %q (garbage written by the test)", kv.ModRevision, name, kv.Value)
			return
		}
		c.violateLocked("rev %d: ages/%s holds a record that does not parse (%v): %q", kv.ModRevision, name, err, kv.Value)
		return
	}
	rec.Rev, rec.Seen = kv.ModRevision, now
	at := kv.ModRevision
	// A write that fails the life or holder check is a violation in itself;
	// it is kept out of the history (and heartbeats go on carrying the last
	// record the rightful holder wrote), so later checkpoints are compared
	// with the rightful ones and one stale write is reported once.
	accepted := true
	if l := c.lives[name]; l == nil {
		accepted = false
		c.violateLocked("rev %d: checkpoint of %s (life %d) by %s while the life is not wanted", at, name, rec.LifeID, rec.Holder)
	} else if l.id != rec.LifeID {
		accepted = false
		c.violateLocked("rev %d: checkpoint of %s for life id %d by %s, but the current life id is %d", at, name, rec.LifeID, rec.Holder, l.id)
	} else if !l.everValid {
		// A life whose options turn bad stops and keeps its age (one final
		// checkpoint by its holder, checked below like any other); one that
		// was never valid must never have run.
		accepted = false
		c.violateLocked("rev %d: checkpoint of invalid life %q by %s", at, name, rec.Holder)
	}
	h, ok := c.holderLocked(name)
	switch {
	case !ok:
		accepted = false
		c.violateLocked("rev %d: checkpoint of %s by %s (holder_rev %d, age %d) while no election key exists: write by a stale holder",
			at, name, rec.Holder, rec.HolderRev, rec.AgeMS)
	case h.Rev != rec.HolderRev:
		accepted = false
		c.violateLocked("rev %d: checkpoint of %s by %s with holder_rev %d, but the holder at that revision is %s (key rev %d): write by a stale holder",
			at, name, rec.Holder, rec.HolderRev, h.Member, h.Rev)
	case h.Member != rec.Holder:
		accepted = false
		c.violateLocked("rev %d: checkpoint of %s names holder %q, but the holder key %s belongs to %q", at, name, rec.Holder, h.Key, h.Member)
	}
	if !accepted {
		return
	}
	c.recs[name] = rec
	// Its effective age: carried forward by its lease's heartbeat, if one
	// newer than the record was applied already (a repaired record, or a
	// beat that was on its way when the life started).
	c.checkpointLocked(name, c.effectiveLocked(rec))
}

// StateWrite is one write of states/<name>: the workload state of a life of
// a command kind, checkpointed by its holder.
type StateWrite struct {
	LifeID      int64     `json:"life_id"`
	Holder      string    `json:"holder"`
	HolderRev   int64     `json:"holder_rev"` // the fencing token the workload was given
	Incarnation int64     `json:"incarnation"`
	Time        time.Time `json:"time"`
	Data        []byte    `json:"data"`

	Rev  int64     `json:"-"`
	Seen time.Time `json:"-"`
}

// applyState checks a write of states/<name> or children/<name> (sec) as
// applyAge checks one of ages/<name>: it parses, is of the current life,
// and is fenced: its holder_rev is the CreateRevision of the holder's
// election key at that very revision, and its holder that key's member.
// Within one life, holder_rev never goes down. Deletes (the life ended)
// are not judged. The writes of states/ are kept (States).
func (c *Checker) applyState(typ mvccpb.Event_EventType, sec, name string, kv *mvccpb.KeyValue, now time.Time) {
	at := kv.ModRevision
	if typ == mvccpb.DELETE {
		c.eventLocked("rev %d: %s/%s deleted", at, sec, name)
		return
	}
	var w StateWrite
	if err := json.Unmarshal(kv.Value, &w); err != nil || w.LifeID <= 0 || w.HolderRev <= 0 || w.Incarnation <= 0 || w.Holder == "" {
		c.violateLocked("rev %d: %s/%s holds a record that does not parse (%v): %.200q", at, sec, name, err, kv.Value)
		return
	}
	w.Rev, w.Seen = at, now
	l := c.lives[name]
	h, ok := c.holderLocked(name)
	switch {
	case l == nil:
		c.violateLocked("rev %d: %s/%s (life %d) written by %s while the life is not wanted", at, sec, name, w.LifeID, w.Holder)
		return
	case l.id != w.LifeID:
		c.violateLocked("rev %d: %s/%s for life id %d by %s, but the current life id is %d", at, sec, name, w.LifeID, w.Holder, l.id)
		return
	case !ok:
		c.violateLocked("rev %d: %s/%s written by %s (holder_rev %d) while no election key exists: write by a stale holder", at, sec, name, w.Holder, w.HolderRev)
		return
	case h.Rev != w.HolderRev || h.Member != w.Holder:
		c.violateLocked("rev %d: %s/%s written by %s with holder_rev %d, but the holder at that revision is %s (key rev %d): write by a stale holder",
			at, sec, name, w.Holder, w.HolderRev, h.Member, h.Rev)
		return
	}
	last := c.lastToken[sec+"/"+name]
	if last.LifeID == w.LifeID && w.HolderRev < last.HolderRev {
		c.violateLocked("rev %d: fencing token of %s/%s went down from %d to %d", at, sec, name, last.HolderRev, w.HolderRev)
	}
	c.lastToken[sec+"/"+name] = w
	if sec != "states" {
		return
	}
	if ws := c.states[name]; len(ws) == 0 || ws[len(ws)-1].HolderRev != w.HolderRev {
		c.eventLocked("rev %d: first state of %s by %s (token %d): %d bytes", at, name, w.Holder, w.HolderRev, len(w.Data))
	}
	c.states[name] = append(c.states[name], w)
}

// States returns the accepted writes of states/<name>, oldest first.
func (c *Checker) States(name string) []StateWrite {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]StateWrite(nil), c.states[name]...)
}

// effectiveLocked is rec carried forward by the last accepted heartbeat
// of its lease, if one newer than the record was applied.
func (c *Checker) effectiveLocked(rec Checkpoint) Checkpoint {
	if b, ok := c.beats[rec.Lease]; ok {
		rec, _ = rec.carried(b)
	}
	return rec
}

// applyHeartbeat folds one heartbeat event: a checkpoint of every wanted
// life whose accepted record runs on its lease.
func (c *Checker) applyHeartbeat(typ mvccpb.Event_EventType, rest string, kv *mvccpb.KeyValue, now time.Time) {
	at := kv.ModRevision
	lease, err := strconv.ParseInt(rest, 16, 64)
	if err != nil || lease <= 0 {
		c.violateLocked("rev %d: heartbeat key %q is not heartbeats/<lease-hex>", at, string(kv.Key))
		return
	}
	if typ == mvccpb.DELETE {
		delete(c.beats, lease)
		for _, name := range c.onLeaseLocked(lease) {
			c.violateLocked("rev %d: heartbeats/%x deleted while the record of %s still runs on it: its age falls back to the record's", at, lease, name)
		}
		return
	}
	b, err := parseHeartbeat(kv.Value)
	if err != nil {
		c.violateLocked("rev %d: heartbeats/%x holds a heartbeat that does not parse (%v): %q", at, lease, err, kv.Value)
		return
	}
	b.Rev = at
	// The heartbeat is fenced by its member's record being on its lease.
	// At graceful shutdown the last one is applied before the revoke, so
	// it still finds the record.
	switch ml, ok := c.members[b.Member]; {
	case !ok:
		c.violateLocked("rev %d: stale heartbeat heartbeats/%x by %s (clock %d ms): members/%s is gone", at, lease, b.Member, b.ClockMS, b.Member)
		return
	case ml != lease:
		c.violateLocked("rev %d: stale heartbeat heartbeats/%x by %s (clock %d ms): members/%s is on lease %x", at, lease, b.Member, b.ClockMS, b.Member, ml)
		return
	}
	prev, seen := c.beats[lease]
	if seen && b.ClockMS < prev.ClockMS {
		c.violateLocked("rev %d: heartbeat clock of heartbeats/%x by %s went back from %d ms (rev %d) to %d ms",
			at, lease, b.Member, prev.ClockMS, prev.Rev, b.ClockMS)
		return
	}
	if !seen {
		c.eventLocked("rev %d: first heartbeat of %s on lease %x (clock %d ms)", at, b.Member, lease, b.ClockMS)
	}
	c.beats[lease] = b
	for _, name := range c.onLeaseLocked(lease) {
		rec := c.recs[name]
		eff, moved := rec.carried(b)
		if !moved {
			continue
		}
		eff.Rev, eff.Seen, eff.Beat = at, now, true
		if h, ok := c.holderLocked(name); !ok || h.Rev != rec.HolderRev {
			c.violateLocked("rev %d: heartbeat of %s (lease %x) carries %s forward to %d ms, but %s's holder key (rev %d) is not the holder at that revision (holder %q, key rev %d): a stale holder makes it older",
				at, b.Member, lease, name, eff.AgeMS, rec.Holder, rec.HolderRev, h.Member, h.Rev)
			continue
		}
		c.checkpointLocked(name, eff)
	}
}

// onLeaseLocked returns the wanted lives whose accepted record runs on
// lease, sorted.
func (c *Checker) onLeaseLocked(lease int64) []string {
	var out []string
	for name, rec := range c.recs {
		if !rec.Running() || rec.Lease != lease {
			continue
		}
		if l := c.lives[name]; l == nil || l.id != rec.LifeID {
			continue
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// overcountSlack is how much more a life's age may grow between two
// checkpoints than the time between them (the holders' wall clocks): the
// record's time and the heartbeat's time are taken a moment after its clock.
const overcountSlack = time.Second

// checkpointLocked checks one effective checkpoint of an accepted record of
// name against the last one of the same life, and adds it to the history.
func (c *Checker) checkpointLocked(name string, cp Checkpoint) {
	at := cp.Rev
	what := "checkpoint"
	if cp.Beat {
		what = "heartbeat"
	}
	if prev, ok := c.lastLocked(name, cp.LifeID); ok {
		if cp.AgeMS < prev.AgeMS {
			c.violateLocked("rev %d: age of %s went down from %d ms (rev %d, %s, incarnation %d) to %d ms (%s, %s, incarnation %d)",
				at, name, prev.AgeMS, prev.Rev, prev.Holder, prev.Incarnation, cp.AgeMS, what, cp.Holder, cp.Incarnation)
		}
		if grew, took := time.Duration(cp.AgeMS-prev.AgeMS)*time.Millisecond, cp.Time.Sub(prev.Time); grew > max(took, 0)+overcountSlack {
			c.violateLocked("rev %d: age of %s grew by %v (%d -> %d ms, %s by %s) in %v between checkpoints (rev %d by %s): time counted that it did not run",
				at, name, grew, prev.AgeMS, cp.AgeMS, what, cp.Holder, took.Round(time.Millisecond), prev.Rev, prev.Holder)
		}
		if cp.Incarnation < prev.Incarnation {
			c.violateLocked("rev %d: incarnation of %s went down from %d to %d", at, name, prev.Incarnation, cp.Incarnation)
		}
		if cp.HolderRev != prev.HolderRev && cp.Incarnation <= prev.Incarnation {
			c.violateLocked("rev %d: new holder %s (key rev %d) of %s kept incarnation %d of %s (key rev %d)",
				at, cp.Holder, cp.HolderRev, name, cp.Incarnation, prev.Holder, prev.HolderRev)
		}
		if cp.HolderRev != prev.HolderRev {
			c.eventLocked("rev %d: %s incarnation %d on %s resumes at %d ms (previous checkpoint %d ms by %s, %v earlier)",
				at, name, cp.Incarnation, cp.Holder, cp.AgeMS, prev.AgeMS, prev.Holder, cp.Time.Sub(prev.Time).Round(time.Millisecond))
		} else if !cp.Beat && !cp.Running() {
			c.eventLocked("rev %d: %s stopped by %s at %d ms (final record)", at, name, cp.Holder, cp.AgeMS)
		}
	} else {
		c.eventLocked("rev %d: first checkpoint of %s (life %d) by %s: age %d ms, incarnation %d", at, name, cp.LifeID, cp.Holder, cp.AgeMS, cp.Incarnation)
	}
	c.hist[name] = append(c.hist[name], cp)
}

// monitor flags wanted lives that go without a checkpoint past the bound.
func (c *Checker) monitor(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		c.mu.Lock()
		if !c.suspended {
			for name, l := range c.lives {
				if !l.valid {
					continue
				}
				ref := l.since
				if last, ok := c.lastLocked(name, l.id); ok {
					// The holder's clock says when the age was taken; the
					// checker's when it arrived. The earlier is the stricter,
					// and a record stamped in the future cannot hide a gap.
					at := last.Time
					if last.Seen.Before(at) {
						at = last.Seen
					}
					if at.After(ref) {
						ref = at
					}
				}
				if c.resumed.After(ref) {
					ref = c.resumed
				}
				if gap := now.Sub(ref); gap > c.bound && !c.flagged[name].Equal(ref) {
					c.flagged[name] = ref
					h, _ := c.holderLocked(name)
					c.violateLocked("life %s (id %d) has had no checkpoint for %v, over the bound %v (holder now: %q)",
						name, l.id, gap.Round(time.Millisecond), c.bound, h.Member)
				}
			}
		}
		c.mu.Unlock()
	}
}

func (c *Checker) holderLocked(name string) (Candidate, bool) {
	var best Candidate
	found := false
	for _, cd := range c.cands[name] {
		if !found || cd.Rev < best.Rev {
			best, found = cd, true
		}
	}
	return best, found
}

func (c *Checker) lastLocked(name string, lifeID int64) (Checkpoint, bool) {
	h := c.hist[name]
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].LifeID == lifeID {
			return h[i], true
		}
	}
	return Checkpoint{}, false
}

func (c *Checker) violateLocked(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.violations = append(c.violations, msg)
	c.eventLocked("VIOLATION: %s", msg)
}

func (c *Checker) eventLocked(format string, args ...any) {
	if len(c.timeline) < 20000 {
		c.timeline = append(c.timeline, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

// Note adds a line of the test's own to the timeline.
func (c *Checker) Note(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.eventLocked("TEST: "+format, args...)
}

// Stop ends the watch.
func (c *Checker) Stop() {
	c.cancel()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}

// Check fails t with every violation found since the last Check.
func (c *Checker) Check(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	v := c.violations[c.reported:]
	c.reported = len(c.violations)
	c.mu.Unlock()
	for _, s := range v {
		t.Errorf("invariant broken: %s", s)
	}
}

// Violations returns every violation found so far.
func (c *Checker) Violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.violations...)
}

// Timeline returns the checker's log of holder changes, incarnations and
// violations.
func (c *Checker) Timeline() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.timeline, "\n") + "\n"
}

// SetBound changes how long a wanted life may go without a checkpoint.
func (c *Checker) SetBound(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bound = d
}

// Suspend stops the availability check, for outages the test causes on
// purpose (no etcd quorum). Safety checks go on.
func (c *Checker) Suspend() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.suspended = true
	c.eventLocked("TEST: availability check suspended")
}

// Resume starts the availability check again, counting from now.
func (c *Checker) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.suspended, c.resumed = false, time.Now()
	c.eventLocked("TEST: availability check resumed")
}

// AllowGarbage tells the checker the test writes garbage into ages/<name>.
func (c *Checker) AllowGarbage(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.garbageOK[name] = true
}

// Rev returns the last revision the checker has seen.
func (c *Checker) Rev() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rev
}

// WaitRev waits until the checker has seen revision rev.
func (c *Checker) WaitRev(t testing.TB, rev int64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("checker to reach revision %d", rev), func() (bool, string) {
		r := c.Rev()
		return r >= rev, fmt.Sprintf("at %d", r)
	})
}

// Holder returns the current holder of a life, by the election keys.
func (c *Checker) Holder(name string) (Candidate, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holderLocked(name)
}

// Candidates returns a life's election keys, lowest revision first.
func (c *Checker) Candidates(name string) []Candidate {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Candidate, 0, len(c.cands[name]))
	for _, cd := range c.cands[name] {
		out = append(out, cd)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rev < out[j].Rev })
	return out
}

// Members returns the members registered now.
func (c *Checker) Members() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.members))
	for m := range c.members {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// LifeID returns the current life id of name, if it is wanted.
func (c *Checker) LifeID(name string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lives[name]
	if l == nil {
		return 0, false
	}
	return l.id, true
}

// Latest returns the newest checkpoint of the current life of name.
func (c *Checker) Latest(name string) (Checkpoint, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lives[name]
	if l == nil {
		return Checkpoint{}, false
	}
	return c.lastLocked(name, l.id)
}

// History returns every checkpoint of the current life of name, oldest first.
func (c *Checker) History(name string) []Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lives[name]
	if l == nil {
		return nil
	}
	var out []Checkpoint
	for _, r := range c.hist[name] {
		if r.LifeID == l.id {
			out = append(out, r)
		}
	}
	return out
}

// Quarantined returns the bytes under quarantine/<name>, if any.
func (c *Checker) Quarantined(name string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.quarantine[name]
	return b, ok
}

// Running reports whether name's current holder has a checkpoint (its
// running record, or a heartbeat carrying it forward) after the given time:
// the life runs now, on that holder.
func (c *Checker) Running(name string, after time.Time) (Checkpoint, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lives[name]
	if l == nil {
		return Checkpoint{}, false
	}
	last, ok := c.lastLocked(name, l.id)
	if !ok || !last.Running() || !last.Time.After(after) {
		return last, false
	}
	h, ok := c.holderLocked(name)
	return last, ok && h.Rev == last.HolderRev
}

// WaitRunning waits until every life in names runs with a checkpoint newer
// than after, and returns their latest checkpoints.
func (c *Checker) WaitRunning(t testing.TB, names []string, after time.Time, timeout time.Duration) map[string]Checkpoint {
	t.Helper()
	out := make(map[string]Checkpoint, len(names))
	waitFor(t, timeout, fmt.Sprintf("%d lives to run", len(names)), func() (bool, string) {
		var missing []string
		for _, n := range names {
			cp, ok := c.Running(n, after)
			if !ok {
				missing = append(missing, n)
				continue
			}
			out[n] = cp
		}
		return len(missing) == 0, fmt.Sprintf("%d not running: %s", len(missing), abbrev(missing))
	})
	return out
}

// HeldBy returns the wanted lives whose current holder is member, sorted.
func (c *Checker) HeldBy(member string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name, l := range c.lives {
		if !l.valid {
			continue
		}
		if h, ok := c.holderLocked(name); ok && h.Member == member {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Handoff is how a life moved from one holder to the next around a moment
// the test caused (a kill, stop, freeze or cut).
type Handoff struct {
	Name     string
	Old, New Checkpoint
	// Failover is from the moment to the new holder's first checkpoint.
	Failover time.Duration
	// Loss is the age the life had (or would have had) at the moment, minus
	// the age the new holder resumed at: what the failure cost it.
	Loss time.Duration
}

// Handoff finds how name moved off the holder that held it at the moment
// at: the last checkpoint of that holder and the first of the next one.
// ok is false while there is no next holder yet.
func (c *Checker) Handoff(name string, at time.Time) (Handoff, bool) {
	hist := c.History(name)
	oldIdx := -1
	for i, r := range hist {
		if !r.Time.After(at) {
			oldIdx = i
		}
	}
	if oldIdx < 0 {
		return Handoff{}, false
	}
	oldRev := hist[oldIdx].HolderRev
	lastOld := oldIdx
	for i := oldIdx + 1; i < len(hist) && hist[i].HolderRev == oldRev; i++ {
		lastOld = i
	}
	if lastOld+1 >= len(hist) {
		return Handoff{}, false
	}
	o, n := hist[lastOld], hist[lastOld+1]
	expected := o.AgeMS
	if d := at.Sub(o.Time); d > 0 {
		expected += d.Milliseconds()
	}
	return Handoff{
		Name: name, Old: o, New: n,
		Failover: n.Time.Sub(at),
		Loss:     time.Duration(expected-n.AgeMS) * time.Millisecond,
	}, true
}

// WaitHandoffs waits until every life in names has moved off the holder it had
// at the moment at, and returns how.
func (c *Checker) WaitHandoffs(t testing.TB, names []string, at time.Time, timeout time.Duration) []Handoff {
	t.Helper()
	var out []Handoff
	waitFor(t, timeout, fmt.Sprintf("%d lives to move to a new holder", len(names)), func() (bool, string) {
		out = out[:0]
		var missing []string
		for _, n := range names {
			h, ok := c.Handoff(n, at)
			if !ok {
				missing = append(missing, n)
				continue
			}
			out = append(out, h)
		}
		return len(missing) == 0, fmt.Sprintf("%d still without a new holder: %s", len(missing), abbrev(missing))
	})
	return out
}

func abbrev(xs []string) string {
	if len(xs) > 8 {
		return strings.Join(xs[:8], ",") + fmt.Sprintf(",... (%d more)", len(xs)-8)
	}
	return strings.Join(xs, ",")
}
