package engine

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// Placement is rendezvous (highest random weight) hashing: every member
// scores every life, and the K highest-scoring live members are the life's
// candidates, in order of preference. Only candidates campaign for a life,
// so etcd holds lives x K election keys, not lives x members; when a member
// joins or leaves, only the lives whose top K it enters or leaves move, and
// every member that sees the same member set computes the same answer.
//
// Placement only says who should try. The election decides who runs a life,
// so members with different views of the member set can never run a life
// twice; at worst, for a moment, a life has an extra candidate.

// score is the rendezvous weight of member for life.
func score(member, life string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(member))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(life))
	return mix(h.Sum64())
}

// mix spreads FNV's output over all 64 bits (splitmix64's finaliser), so that
// members whose ids differ in one character do not score in lockstep.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Candidates returns the k members of pool that should campaign for life,
// most preferred first. pool must not hold duplicates.
func Candidates(life string, pool []string, k int) []string {
	type scored struct {
		id string
		s  uint64
	}
	all := make([]scored, len(pool))
	for i, id := range pool {
		all[i] = scored{id: id, s: score(id, life)}
	}
	slices.SortFunc(all, func(a, b scored) int {
		if c := cmp.Compare(b.s, a.s); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	out := make([]string, 0, min(k, len(all)))
	for _, c := range all[:min(k, len(all))] {
		out = append(out, c.id)
	}
	return out
}
