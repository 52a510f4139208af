package engine

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

func TestCandidates(t *testing.T) {
	pool := []string{"m1", "m2", "m3"}
	tests := []struct {
		name string
		pool []string
		k    int
		want int
	}{
		{name: "two of three", pool: pool, k: 2, want: 2},
		{name: "more than the pool", pool: pool, k: 5, want: 3},
		{name: "one member", pool: []string{"m1"}, k: 2, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Candidates("Adam", tt.pool, tt.k)
			if len(got) != tt.want {
				t.Fatalf("candidates = %v, want %d", got, tt.want)
			}
			rev := slices.Clone(tt.pool)
			slices.Reverse(rev)
			if again := Candidates("Adam", rev, tt.k); !slices.Equal(got, again) {
				t.Fatalf("order of the pool changed the answer: %v vs %v", got, again)
			}
		})
	}
}

// Rendezvous placement spreads lives evenly, and adding a member moves only
// the lives it becomes preferred for: about 1/n of them.
func TestCandidatesBalanceAndMinimalMoves(t *testing.T) {
	const lives = 20000
	three := []string{"m1", "m2", "m3"}
	four := []string{"m1", "m2", "m3", "m4"}
	count := map[string]int{}
	moved := 0
	for i := range lives {
		name := fmt.Sprintf("life-%05d", i)
		a, b := Candidates(name, three, 2)[0], Candidates(name, four, 2)[0]
		count[b]++
		if a != b {
			moved++
			if b != "m4" {
				t.Fatalf("%s moved from %s to %s, not to the new member", name, a, b)
			}
		}
	}
	for id, n := range count {
		if share := float64(n) / lives; math.Abs(share-0.25) > 0.02 {
			t.Errorf("%s is preferred for %.3f of the lives, want 0.25 +- 0.02", id, share)
		}
	}
	if share := float64(moved) / lives; math.Abs(share-0.25) > 0.02 {
		t.Errorf("%.3f of the lives moved, want about 0.25", share)
	}
}
