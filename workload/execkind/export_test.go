package execkind

import "errors"

// UseCgroups turns the children's cgroups on (where the machine allows
// them: the default) or off, so that a test can run the subreaper alone.
// It must be called while no hold runs.
func UseCgroups(on bool) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.cgOff = nil
	if !on {
		procs.cgOff = errors.New("turned off by a test")
	}
}

// ReapAll turns ReapOrphans on or off, for a test.
func ReapAll(on bool) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.reapAll = on
}

// CgroupV2 returns the cgroup2 mount point and this process's cgroup in it,
// as the member finds them (cgroup.go).
func CgroupV2() (mount, own string, err error) {
	if mount, err = cgroup2Mount(); err != nil {
		return "", "", err
	}
	own, err = ownCgroup()
	return mount, own, err
}
