package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/registry"
)

// watchAges watches, from rev, the one key range that holds ages/ and
// heartbeats/ (and elections/, which lies between them and which AgeView
// ignores): one stream, so a heartbeat and the age records written after it
// arrive in the order etcd applied them. Two watches would not order a
// stopping member's last heartbeat before its successors' first records.
func watchAges(ctx context.Context, cli *clientv3.Client, rev int64) clientv3.WatchChan {
	return cli.Watch(ctx, agesPrefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(keys.Heartbeats())), clientv3.WithRev(rev))
}

// listAges reads ages/ and heartbeats/ at one revision and returns their
// keys with that revision: the listing a watch of both (watchAges) goes on
// from.
func listAges(ctx context.Context, cli *clientv3.Client) ([]*mvccpb.KeyValue, int64, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(agesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(keys.Heartbeats(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, err
	}
	kvs := append(resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs...)
	return kvs, resp.Header.Revision, nil
}

// obs is one effective age of a life as the bench's watch saw it: its age
// record as written, or carried forward by its holder's heartbeat (beat).
type obs struct {
	rec  registry.AgeRecord
	at   time.Time // when the watch delivered it
	rev  int64
	del  bool
	beat bool // from a heartbeat, not from a write of the record
}

// ageLog keeps every effective age of every life (each write of its record
// and each heartbeat that carried it forward), with the time the bench saw
// it, from one watch on ages/ and heartbeats/. It is for the small-scale
// trials: a heartbeat adds one entry per life its member holds.
type ageLog struct {
	mu         sync.Mutex
	view       *registry.AgeView
	hist       map[string][]obs
	lastChange time.Time // the last time a life's holder changed
	notify     chan struct{}
	err        error
	decreases  []string // a life's effective age went down within one life id
	badRecords int
	// leaseGone is when the watch saw each member's first candidacy key
	// (elections/<name>/<lease-hex>) deleted after its last one was put,
	// by lease: the revoke (or expiry) of that lease, for a member that
	// held lives to its end.
	leaseGone map[int64]time.Time
}

func startAgeLog(ctx context.Context, cli *clientv3.Client) (*ageLog, error) {
	kvs, rev, err := listAges(ctx, cli)
	if err != nil {
		return nil, err
	}
	view := registry.NewAgeView(keys)
	if err := view.Load(kvs); err != nil {
		return nil, err
	}
	l := &ageLog{view: view, hist: make(map[string][]obs), notify: make(chan struct{}), lastChange: time.Now(), leaseGone: make(map[int64]time.Time)}
	wch := watchAges(clientv3.WithRequireLeader(ctx), cli, rev+1)
	go func() {
		for wr := range wch {
			now := time.Now()
			if err := wr.Err(); err != nil {
				l.mu.Lock()
				l.err = err
				l.broadcastLocked()
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			for _, ev := range wr.Events {
				l.addLocked(ev, now)
			}
			l.broadcastLocked()
			l.mu.Unlock()
		}
		l.mu.Lock()
		if l.err == nil && ctx.Err() == nil {
			l.err = errors.New("watch on ages/ and heartbeats/ closed")
		}
		l.broadcastLocked()
		l.mu.Unlock()
	}()
	return l, nil
}

func (l *ageLog) addLocked(ev *clientv3.Event, now time.Time) {
	if key := string(ev.Kv.Key); strings.HasPrefix(key, keys.Elections()) {
		if lease, err := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 16, 64); err == nil {
			if ev.Type == clientv3.EventTypePut {
				delete(l.leaseGone, lease)
			} else if _, seen := l.leaseGone[lease]; !seen {
				l.leaseGone[lease] = now
			}
		}
		return
	}
	changes, err := l.view.Apply(ev)
	if err != nil {
		l.badRecords++
		return
	}
	for _, c := range changes {
		o := obs{rec: c.Rec, at: now, rev: ev.Kv.ModRevision, del: c.Deleted, beat: c.Beat}
		if !o.beat && !o.del {
			// A write of the record: keep it as written (the age a life
			// resumed at, at the time it started), not carried forward by
			// a heartbeat its holder wrote before it.
			if rec, err := registry.ParseAgeRecord(ev.Kv.Value); err == nil {
				o.rec = rec
			}
		}
		h := l.hist[c.Name]
		if !o.del {
			if prev, ok := lastRecord(h); ok {
				if prev.rec.Holder != o.rec.Holder {
					l.lastChange = now
				}
				// The carried age: a record written again from its start
				// (a repair) is not a decrease.
				if prev.rec.LifeID == c.Rec.LifeID && c.Rec.AgeMS < prev.rec.AgeMS {
					l.decreases = append(l.decreases, fmt.Sprintf("%s: %d ms (%s, inc %d%s) after %d ms (%s, inc %d%s)",
						c.Name, c.Rec.AgeMS, c.Rec.Holder, c.Rec.Incarnation, beatNote(o.beat), prev.rec.AgeMS, prev.rec.Holder, prev.rec.Incarnation, beatNote(prev.beat)))
				}
			} else {
				l.lastChange = now
			}
		}
		l.hist[c.Name] = append(h, o)
	}
}

func beatNote(beat bool) string {
	if beat {
		return ", by heartbeat"
	}
	return ""
}

func lastRecord(h []obs) (obs, bool) {
	for i := len(h) - 1; i >= 0; i-- {
		if !h[i].del {
			return h[i], true
		}
	}
	return obs{}, false
}

func (l *ageLog) broadcastLocked() {
	close(l.notify)
	l.notify = make(chan struct{})
}

// waitUntil waits until cond (called with l.mu held) is true, re-checking
// on every watch event and every 25ms.
func (l *ageLog) waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	return waitNotified(ctx, timeout, 25*time.Millisecond, func() (bool, <-chan struct{}, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return cond(), l.notify, l.err
	})
}

// holders returns the holder of each life's latest record.
func (l *ageLog) holdersLocked(names []string) map[string]obs {
	out := make(map[string]obs, len(names))
	for _, n := range names {
		if o, ok := lastRecord(l.hist[n]); ok {
			out[n] = o
		}
	}
	return out
}
