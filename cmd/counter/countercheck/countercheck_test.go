package countercheck_test

import (
	"strings"
	"testing"

	"github.com/immortald/immortald/cmd/counter/countercheck"
)

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		name, log string
		maxLoss   int64
		want      []string // substrings of the violations, in order
		handoffs  int
	}{
		{name: "one runner", log: "5 1 100\n5 2 200\n5 3 300\n"},
		{name: "graceful handoff", log: "5 1 100\n5 2 200\n9 3 250\n9 4 350\n", handoffs: 1},
		{name: "crash within the bound", log: "5 1 100\n5 2 200\n5 3 300\n9 3 900\n", maxLoss: 1, handoffs: 1},
		{name: "state written, line not", log: "5 1 100\n9 3 900\n", handoffs: 1},
		{name: "crash over the bound", log: "5 1 100\n5 2 200\n5 3 300\n9 2 900\n", maxLoss: 1, handoffs: 1, want: []string{"line 4: token 9 restarted at n 2 after 3: lost 2 counts"}},
		{name: "two runners", log: "5 1 100\n9 2 200\n5 2 210\n9 3 300\n", handoffs: 1, want: []string{"line 3: token 5 after token 9"}},
		{name: "step back", log: "5 1 100\n5 2 200\n5 1 300\n", want: []string{"line 3: n 1 after 2"}},
		{name: "skip ahead", log: "5 1 100\n9 5 200\n", handoffs: 1, want: []string{"skip ahead"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := countercheck.Check(strings.NewReader(tt.log), tt.maxLoss)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Violations) != len(tt.want) || len(rep.Handoffs) != tt.handoffs {
				t.Fatalf("violations %q, handoffs %+v; want %d and %d", rep.Violations, rep.Handoffs, len(tt.want), tt.handoffs)
			}
			for i, w := range tt.want {
				if !strings.Contains(rep.Violations[i], w) {
					t.Errorf("violation %q, want it to contain %q", rep.Violations[i], w)
				}
			}
		})
	}
	if _, err := countercheck.Check(strings.NewReader("5 1\n"), 0); err == nil {
		t.Error("a short line parsed")
	}
	rep, _ := countercheck.Check(strings.NewReader("5 1 100\n5 2 200\n9 3 250\n"), 0)
	if h := rep.Handoffs[0]; h.FromToken != 5 || h.ToToken != 9 || h.Loss != 0 || h.GapMS != 50 {
		t.Errorf("handoff %+v", h)
	}
}
