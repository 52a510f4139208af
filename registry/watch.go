package registry

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/immortald/immortald/internal/backoff"
)

// Handler receives the wanted lives. Calls come from one goroutine, in order.
type Handler interface {
	// Sync delivers every request under lives/ as of revision rev. Lives the
	// handler knows that are not in lives are gone.
	Sync(rev int64, lives []Life)
	// Put delivers a new or changed request.
	Put(l Life)
	// Delete delivers the end of a request.
	Delete(name string, rev int64)
}

// pageSize bounds one list response, so a keyspace of 100k lives is read in
// pieces instead of one message of many megabytes.
const pageSize = 5000

// Watch lists lives/ and then watches it from the next revision, delivering
// everything to h, until ctx ends. After a compaction, a lost leader or a
// broken watch it lists again and calls h.Sync. It returns ctx.Err().
func Watch(ctx context.Context, cli *clientv3.Client, keys Keys, h Handler, log *slog.Logger) error {
	return watchPrefix(ctx, cli, keys.Lives(), livesAdapter{keys: keys, h: h}, log)
}

// Member is a live member as seen under members/: its id and the lease its
// record (and every candidacy it holds) lives on.
type Member struct {
	ID    string
	Lease int64
	// Kinds the member runs, from its record (see MemberRecord.Kinds); nil
	// for a record of an older member or one that does not parse.
	Kinds []string
}

// Runs reports whether the member runs lives of kind.
func (m Member) Runs(kind string) bool {
	return MemberRecord{Kinds: m.Kinds}.Runs(kind)
}

// WatchMembers delivers the live members (those with a record under
// members/), sorted by id, to f, in full, every time the set, a member's
// lease or its kinds change, until ctx ends. It returns ctx.Err().
func WatchMembers(ctx context.Context, cli *clientv3.Client, keys Keys, f func(members []Member), log *slog.Logger) error {
	return watchPrefix(ctx, cli, keys.Members(), &membersAdapter{keys: keys, f: f}, log)
}

// kvHandler receives the raw keys of a watched prefix.
type kvHandler interface {
	sync(rev int64, kvs []*mvccpb.KeyValue)
	put(kv *mvccpb.KeyValue)
	del(key string, rev int64)
}

type livesAdapter struct {
	keys Keys
	h    Handler
}

func (a livesAdapter) life(kv *mvccpb.KeyValue) Life {
	return ParseLife(NameOf(a.keys.Lives(), string(kv.Key)), kv.CreateRevision, kv.ModRevision, kv.Value)
}

func (a livesAdapter) sync(rev int64, kvs []*mvccpb.KeyValue) {
	lives := make([]Life, 0, len(kvs))
	for _, kv := range kvs {
		lives = append(lives, a.life(kv))
	}
	a.h.Sync(rev, lives)
}

func (a livesAdapter) put(kv *mvccpb.KeyValue) { a.h.Put(a.life(kv)) }

func (a livesAdapter) del(key string, rev int64) { a.h.Delete(NameOf(a.keys.Lives(), key), rev) }

type membersAdapter struct {
	keys    Keys
	f       func([]Member)
	members map[string]Member // by id
}

func (a *membersAdapter) member(kv *mvccpb.KeyValue) Member {
	rec, _ := ParseMemberRecord(kv.Value) // a record that does not parse runs age only
	return Member{ID: NameOf(a.keys.Members(), string(kv.Key)), Lease: kv.Lease, Kinds: rec.Kinds}
}

func (a *membersAdapter) sync(_ int64, kvs []*mvccpb.KeyValue) {
	a.members = make(map[string]Member, len(kvs))
	for _, kv := range kvs {
		m := a.member(kv)
		a.members[m.ID] = m
	}
	a.deliver()
}

func (a *membersAdapter) put(kv *mvccpb.KeyValue) {
	m := a.member(kv)
	if old, ok := a.members[m.ID]; !ok || old.Lease != m.Lease || !slices.Equal(old.Kinds, m.Kinds) {
		a.members[m.ID] = m
		a.deliver()
	}
}

func (a *membersAdapter) del(key string, _ int64) {
	id := NameOf(a.keys.Members(), key)
	if _, ok := a.members[id]; ok {
		delete(a.members, id)
		a.deliver()
	}
}

func (a *membersAdapter) deliver() {
	out := make([]Member, 0, len(a.members))
	for _, m := range a.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(x, y Member) int { return strings.Compare(x.ID, y.ID) })
	a.f(out)
}

// watchPrefix lists prefix and watches it from the next revision, listing
// again whenever the watch breaks, until ctx ends.
func watchPrefix(ctx context.Context, cli *clientv3.Client, prefix string, h kvHandler, log *slog.Logger) error {
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		rev, kvs, err := RangeAll(ctx, cli, prefix, 0)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Warn("cannot list; will retry", "prefix", prefix, "err", err)
			if !retry.Wait(ctx) {
				return ctx.Err()
			}
			continue
		}
		retry.Reset()
		h.sync(rev, kvs)
		reason := watchFrom(ctx, cli, prefix, h, rev+1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("watch ended; listing again", "prefix", prefix, "reason", reason)
		if !retry.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// List reads every request under lives/ at one revision.
func List(ctx context.Context, cli *clientv3.Client, keys Keys) (int64, []Life, error) {
	rev, kvs, err := RangeAll(ctx, cli, keys.Lives(), 0)
	if err != nil {
		return 0, nil, err
	}
	lives := make([]Life, 0, len(kvs))
	for _, kv := range kvs {
		lives = append(lives, ParseLife(NameOf(keys.Lives(), string(kv.Key)), kv.CreateRevision, kv.ModRevision, kv.Value))
	}
	return rev, lives, nil
}

// RangeAll reads every key under prefix, page by page, at revision rev (0:
// the current one), and returns the revision it read at. opts are added to
// every page's Get (clientv3.WithKeysOnly, for example).
func RangeAll(ctx context.Context, cli *clientv3.Client, prefix string, rev int64, opts ...clientv3.OpOption) (int64, []*mvccpb.KeyValue, error) {
	var (
		kvs  []*mvccpb.KeyValue
		from = prefix
		end  = clientv3.GetPrefixRangeEnd(prefix)
	)
	for {
		page := append([]clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}, opts...)
		if rev != 0 {
			page = append(page, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, from, page...)
		if err != nil {
			return 0, nil, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, kvs, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// watchFrom delivers events from rev until the watch ends, and says why.
func watchFrom(ctx context.Context, cli *clientv3.Client, prefix string, h kvHandler, rev int64) string {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	for wr := range wch {
		if wr.CompactRevision != 0 {
			return "compacted at revision " + strconv.FormatInt(wr.CompactRevision, 10)
		}
		if err := wr.Err(); err != nil {
			return err.Error()
		}
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.PUT:
				h.put(ev.Kv)
			case mvccpb.DELETE:
				h.del(string(ev.Kv.Key), ev.Kv.ModRevision)
			}
		}
	}
	return "watch channel closed"
}
