package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Events of a life's status, as a StatusWatch reports them (the `ls -w`
// event words).
const (
	// EventListed is a life as the watch first read it (not a change).
	EventListed = "listed"
	// EventAdded is a new request: a name not requested before, or
	// requested again (a new life id).
	EventAdded = "added"
	// EventStarted is a life running where the watch had not seen it run
	// before (under this life id).
	EventStarted = "started"
	// EventMoved is a new incarnation on another holder than the last one
	// the watch saw run it: a handoff or a failover.
	EventMoved = "moved"
	// EventRestarted is a new incarnation on the same holder id (a member
	// that restarted, or the kind changed in place).
	EventRestarted = "restarted"
	// EventStopped is a running life no longer running: waiting for a
	// holder (the brief moment of a handoff, or a failover's lease TTL).
	EventStopped = "stopped"
	// EventInvalid is a request that turned invalid.
	EventInvalid = "invalid"
	// EventChanged is any other change of what `ls -o json` shows but the
	// age: labels, kind, error, the child's status, invalid to waiting.
	EventChanged = "changed"
	// EventRemoved is a request deleted; the status is the life's as last
	// seen.
	EventRemoved = "removed"
)

// StatusChange is one change of one life's status.
type StatusChange struct {
	Event  string // one of the Event constants
	Rev    int64  // etcd revision of the change (of the read, for EventListed)
	Status Status
	// HolderLive, for EventStopped, reports whether the holder that last
	// ran the life was still a member at Rev (its record there, on the
	// lease its age record names): it let the life go itself (a handoff, a
	// graceful stop). False when its lease ended under it (a crash, an
	// expiry; and the revoke of a member that shut down holding more lives
	// than fit in its final Txn), and for other events.
	HolderLive bool
}

// StatusWatch follows every life's status: one read of the keyspace, then
// one watch of the prefix but states/ from the next revision (no state
// record ever reaches it). It reports changes of what `ls -o json` shows
// but the age: heartbeats age the lives (see
// Get) without being changes. Changes are computed once per revision, after
// every event of that revision (a Txn's writes) is applied, so a state that
// no revision had is never reported. It is not safe for concurrent use.
type StatusWatch struct {
	cli    *clientv3.Client
	keys   Keys
	view   *StatusView
	rev    int64
	last   map[string]Status  // by name, as last reported
	ran    map[string]holding // by name: the last holding seen running
	wch    clientv3.WatchChan
	cancel context.CancelFunc
	broken error // why the watch ended; Next reads again
}

// holding is a life id's run on a holder, by incarnation.
type holding struct {
	lifeID      int64
	holder      string
	incarnation int64
}

// WatchStatus reads every life's status (ReadStatusView, bounded by ctx)
// and starts one watch of keys.Prefix() up to keys.States() from the
// revision after that read.
// The watch runs until Close, whatever ctx does. Errors are etcd's, from the
// read.
func WatchStatus(ctx context.Context, cli *clientv3.Client, keys Keys) (*StatusWatch, error) {
	w := &StatusWatch{cli: cli, keys: keys, ran: make(map[string]holding)}
	if err := w.read(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// read replaces the view with a new read and restarts the watch after it.
func (w *StatusWatch) read(ctx context.Context) error {
	rev, v, err := ReadStatusView(ctx, w.cli, w.keys)
	if err != nil {
		return err
	}
	if w.cancel != nil {
		w.cancel()
	}
	w.view, w.rev, w.broken = v, rev, nil
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	w.cancel = cancel
	// Every section a status derives from sorts before states/, the last
	// section (keys_test.go checks it): the watch's range ends there, so
	// no state record (up to ~700 KB each) ever reaches it.
	w.wch = w.cli.Watch(wctx, w.keys.Prefix(), clientv3.WithRange(w.keys.States()), clientv3.WithRev(rev+1))
	return nil
}

// Close ends the watch.
func (w *StatusWatch) Close() {
	if w.cancel != nil {
		w.cancel()
	}
}

// Rev is the revision the watch has seen everything up to.
func (w *StatusWatch) Rev() int64 { return w.rev }

// List returns every life's status as of Rev, sorted by name, and takes it
// as reported: the changes Next returns are against it. Call it once, before
// Next.
func (w *StatusWatch) List() []Status {
	all := w.view.List()
	w.last = make(map[string]Status, len(all))
	for _, st := range all {
		w.note(st)
	}
	return all
}

// Get returns the status of name as of the latest event, its age carried
// forward to its holder's latest heartbeat; ok is false when name is not
// requested.
func (w *StatusWatch) Get(name string) (Status, bool) { return w.view.Status(name) }

// Next waits for the next watch response and returns the changes it made,
// in revision order and, within a revision, by name; often none (a
// heartbeat). When the watch has broken (a compaction, a lost leader),
// Next reads the keyspace again and returns the differences against what it
// had reported, all at the new read's revision. Errors: ctx's, when it ends
// first (nothing is lost: call Next again); etcd's, when that read fails
// (Next tries it again when called again).
func (w *StatusWatch) Next(ctx context.Context) ([]StatusChange, error) {
	if w.last == nil {
		w.List()
	}
	if w.broken != nil {
		return w.reread(ctx)
	}
	var wr clientv3.WatchResponse
	var open bool
	select {
	case wr, open = <-w.wch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	switch {
	case !open:
		w.broken = errors.New("watch channel closed")
	case wr.CompactRevision != 0:
		w.broken = fmt.Errorf("compacted at revision %d", wr.CompactRevision)
	case wr.Err() != nil:
		w.broken = wr.Err()
	}
	if w.broken != nil {
		return w.reread(ctx)
	}
	var out []StatusChange
	for i := 0; i < len(wr.Events); {
		rev := wr.Events[i].Kv.ModRevision
		touched := map[string]bool{}
		for ; i < len(wr.Events) && wr.Events[i].Kv.ModRevision == rev; i++ {
			for _, name := range w.view.Apply(wr.Events[i]) {
				touched[name] = true
			}
		}
		out = append(out, w.changes(rev, slices.Sorted(maps.Keys(touched)))...)
		w.rev = rev
	}
	if wr.Header.Revision > w.rev && len(wr.Events) == 0 {
		w.rev = wr.Header.Revision // a progress notification
	}
	return out, nil
}

// reread reads the keyspace again after a broken watch and reports what
// changed meanwhile.
func (w *StatusWatch) reread(ctx context.Context) ([]StatusChange, error) {
	if err := w.read(ctx); err != nil {
		w.broken = err
		return nil, fmt.Errorf("the watch of %s ended and reading it again failed: %w", w.keys.Prefix(), err)
	}
	names := w.view.Names()
	for name := range w.last {
		if _, ok := w.view.lives[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return w.changes(w.rev, names), nil
}

// changes compares the status of names with what was last reported.
func (w *StatusWatch) changes(rev int64, names []string) []StatusChange {
	var out []StatusChange
	for _, name := range names {
		prev, had := w.last[name]
		cur, ok := w.view.Status(name)
		ev := w.event(prev, had, cur, ok)
		if !ok {
			delete(w.last, name)
			delete(w.ran, name)
			if had {
				out = append(out, StatusChange{Event: EventRemoved, Rev: rev, Status: prev})
			}
			continue
		}
		w.note(cur)
		if ev != "" {
			c := StatusChange{Event: ev, Rev: rev, Status: cur}
			if ev == EventStopped {
				c.HolderLive = w.view.holderLive(prev.Holder, name)
			}
			out = append(out, c)
		}
	}
	return out
}

// note takes st as reported.
func (w *StatusWatch) note(st Status) {
	w.last[st.Name] = st
	if st.State == StateRunning {
		w.ran[st.Name] = holding{lifeID: st.LifeID, holder: st.Holder, incarnation: st.Incarnation}
	}
}

// event names the change from prev (had: there was one) to cur (ok: the
// life is requested), or "" when nothing but the age changed.
func (w *StatusWatch) event(prev Status, had bool, cur Status, ok bool) string {
	switch {
	case !ok:
		return EventRemoved
	case !had || prev.LifeID != cur.LifeID:
		return EventAdded
	case cur.State == StateInvalid && prev.State != StateInvalid:
		return EventInvalid
	case cur.State == StateRunning && (prev.State != StateRunning || prev.Holder != cur.Holder || prev.Incarnation != cur.Incarnation):
		last, seen := w.ran[cur.Name]
		switch {
		case !seen || last.lifeID != cur.LifeID:
			return EventStarted
		case last.holder != cur.Holder:
			return EventMoved
		case last.incarnation != cur.Incarnation:
			return EventRestarted
		}
		return EventStarted // running again on the same incarnation: seen stopped in between
	case prev.State == StateRunning && cur.State != StateRunning:
		return EventStopped
	}
	a, b := prev, cur
	a.Age, a.AgeMS, a.CheckpointTime = 0, 0, nil
	b.Age, b.AgeMS, b.CheckpointTime = 0, 0, nil
	if !reflect.DeepEqual(a, b) {
		return EventChanged
	}
	return ""
}
