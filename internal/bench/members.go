package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/immortald/immortald/internal/observe"
	"github.com/immortald/immortald/registry"
)

// member is one immortald process.
type member struct {
	id   string
	http string // host:port of /readyz and /metrics
	p    *proc
	log  string
}

// startMember starts `immortald run` with id (and extra flags) and waits
// until it is ready.
func (b *bench) startMember(ctx context.Context, id string, extra ...string) (*member, error) {
	port, err := b.ports.pick()
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.gens[id]++
	gen := b.gens[id]
	b.mu.Unlock()
	logPath := filepath.Join(b.logDir, fmt.Sprintf("%s.%d.log", id, gen))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m := &member{id: id, http: fmt.Sprintf("127.0.0.1:%d", port), log: logPath}
	argv := []string{b.bins.Immortald, "run",
		"--id", id,
		"--etcd-endpoints", b.endpoint,
		"--http-addr", m.http,
		"--lease-ttl", b.cfg.leaseTTL,
		"--log-format", "json"}
	m.p, err = b.ps.start("immortald "+id, logf, logf, append(argv, extra...)...)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.members[id] = m
	b.mu.Unlock()
	if err := b.waitReady(ctx, m, 30*time.Second); err != nil {
		return m, err
	}
	b.mu.Lock()
	b.lastStarted = time.Now()
	b.mu.Unlock()
	return m, nil
}

// startMembers starts members with the given ids at once and waits for all.
func (b *bench) startMembers(ctx context.Context, ids ...string) ([]*member, error) {
	return b.startMembersWith(ctx, func(string) []string { return nil }, ids...)
}

// startMembersWith is startMembers, each member with the extra flags
// flags(id).
func (b *bench) startMembersWith(ctx context.Context, flags func(id string) []string, ids ...string) ([]*member, error) {
	out := make([]*member, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = b.startMember(ctx, id, flags(id)...)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// waitReady polls /readyz until it answers 200.
func (b *bench) waitReady(ctx context.Context, m *member, timeout time.Duration) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://" + m.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if m.p.exited() {
			return fmt.Errorf("member %s exited before it was ready: %v (log %s)", m.id, m.p.waitErr, m.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("member %s not ready after %s (log %s)", m.id, timeout, m.log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// alive returns the members whose process runs, sorted by id.
func (b *bench) alive() []*member {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*member
	for _, m := range b.members {
		if !m.p.exited() {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// memberPID reads the pid of id's member process from its record,
// members/<id> (`immortald members -o json`): under `immortald run`, the
// watchdog's child.
func (b *bench) memberPID(ctx context.Context, id string) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := b.cli.Get(rctx, membersPfx+id)
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("no member record of %s", id)
	}
	var m registry.MemberRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.PID == 0 {
		return 0, fmt.Errorf("member record of %s has no pid: %s", id, resp.Kvs[0].Value)
	}
	return m.PID, nil
}

// waitRestarted waits until m's watchdog has started a new member process
// in place of old, and the new one is registered and ready.
func (b *bench) waitRestarted(ctx context.Context, m *member, old int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid, err := b.memberPID(ctx, m.id); err == nil && pid != old {
			break
		}
		if m.p.exited() {
			return fmt.Errorf("the watchdog of %s exited: %v (log %s)", m.id, m.p.waitErr, m.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no new member process of %s 30s after the old one died (log %s)", m.id, m.log)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	if err := b.waitReady(ctx, m, 30*time.Second); err != nil {
		return err
	}
	b.mu.Lock()
	b.lastStarted = time.Now()
	b.mu.Unlock()
	return nil
}

// tree is a member's processes: its watchdog (`immortald run`) and the
// watchdog's children (the member).
func tree(pid int) []int { return append([]int{pid}, observe.Children(pid)...) }

// treeSum sums read over a member's processes. The watchdog's reading
// must succeed; a member between restarts is skipped.
func treeSum[T int64 | float64](pid int, read func(int) (T, error)) (T, error) {
	var sum T
	for i, p := range tree(pid) {
		v, err := read(p)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue
		}
		sum += v
	}
	return sum, nil
}

// treeRSS, treePSS and treeCPU are observe.ReadMem's RSS, observe.PSS and
// observe.CPU of a member's processes, summed.
func treeRSS(pid int) (int64, error) {
	return treeSum(pid, func(p int) (int64, error) { m, err := observe.ReadMem(p); return m.RSS, err })
}
func treePSS(pid int) (int64, error)   { return treeSum(pid, observe.PSS) }
func treeCPU(pid int) (float64, error) { return treeSum(pid, observe.CPU) }
