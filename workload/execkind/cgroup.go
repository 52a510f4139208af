package execkind

// A cgroup v2 per child, where the machine allows it: the child starts in
// a cgroup of its own (clone3's CLONE_INTO_CGROUP, through
// SysProcAttr.CgroupFD, so it is in it from its first instruction), every
// process it starts stays in it whatever it does with its session, group
// or environment, and cgroup.kill (Linux 5.14) SIGKILLs them all at once.
// The cgroups are made under the member's own cgroup, in a directory
// immortald-<member pid>; one that a dead member left behind is emptied
// and removed when the next member starts. It needs write access to the
// member's cgroup (root on a host with a cgroup2 mount, or a delegated
// subtree); elsewhere (a container without it, cgroup v1 alone) the tree
// is found by the subreaper alone (contain.go), which also finds the rare
// process that a root child moves out of its cgroup.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupBase finds where this member's cgroups go: <the cgroup2 mount><own
// cgroup>/immortald-<pid>, made here. It fails when there is no cgroup2
// mount, or it cannot be written, or cgroup.kill is missing.
func cgroupBase(self int) (string, error) {
	mount, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	own, err := ownCgroup()
	if err != nil {
		return "", err
	}
	parent := filepath.Join(mount, own)
	cleanLeftCgroups(parent)
	base := filepath.Join(parent, "immortald-"+strconv.Itoa(self))
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("make %s: %w", base, err)
	}
	probe := filepath.Join(base, "probe")
	if err := os.Mkdir(probe, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		_ = os.Remove(base)
		return "", fmt.Errorf("make %s: %w", probe, err)
	}
	defer os.Remove(probe)
	if _, err := os.Stat(filepath.Join(probe, "cgroup.kill")); err != nil {
		_ = os.Remove(base)
		return "", fmt.Errorf("no cgroup.kill (Linux 5.14 or later): %w", err)
	}
	return base, nil
}

// cgroup2Mount returns the mount point of the cgroup2 hierarchy, from
// /proc/self/mountinfo.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint options ... - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], nil
		}
	}
	return "", errors.New("no cgroup2 mount")
}

// ownCgroup returns this process's cgroup in the v2 hierarchy, from the
// "0::" line of /proc/self/cgroup.
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 line in /proc/self/cgroup")
}

// cleanLeftCgroups kills the processes of, and removes, the immortald-<pid>
// directories under parent whose member is dead (its pid runs no process
// of that directory's: a pid reused by another process leaves the
// directory, whose processes were then killed already or never existed).
func cleanLeftCgroups(parent string) {
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "immortald-"))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "immortald-") || err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its member may be alive
		}
		dir := filepath.Join(parent, e.Name())
		kids, _ := os.ReadDir(dir)
		for _, k := range kids {
			if k.IsDir() {
				cg := &cgroup{dir: filepath.Join(dir, k.Name())}
				cg.kill(time.Second)
				cg.remove()
			}
		}
		_ = os.Remove(dir)
	}
}

// cgroup is one child's cgroup.
type cgroup struct {
	dir string
	fd  *os.File // the directory, for SysProcAttr.CgroupFD
}

// newCgroup makes the cgroup of one child under base.
func newCgroup(base, name string) (*cgroup, error) {
	dir, err := os.MkdirTemp(base, name+"-")
	if err != nil {
		return nil, err
	}
	fd, err := os.Open(dir)
	if err != nil {
		_ = os.Remove(dir)
		return nil, err
	}
	return &cgroup{dir: dir, fd: fd}, nil
}

// procs lists the processes in the cgroup.
func (c *cgroup) procs() []int {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// populated reports whether a process (a live one: the kernel takes an
// exiting process out of its cgroup before it is reaped) is in the cgroup
// or under it.
func (c *cgroup) populated() bool {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.events"))
	if err != nil {
		return false // gone
	}
	return !bytes.Contains(b, []byte("populated 0"))
}

// kill SIGKILLs every process of the cgroup (cgroup.kill) and waits until
// it is empty, at most d; it reports whether it is.
func (c *cgroup) kill(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for c.populated() {
		_ = os.WriteFile(filepath.Join(c.dir, "cgroup.kill"), []byte("1"), 0)
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// remove removes the empty cgroup.
func (c *cgroup) remove() {
	if c.fd != nil {
		_ = c.fd.Close()
	}
	_ = os.Remove(c.dir)
}
