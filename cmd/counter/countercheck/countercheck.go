// Package countercheck checks the log of the counter kind (cmd/counter):
// lines "<token> <n> <unix-ms>" appended by every child that ever ran one
// counter life, in the order they were written (one shared file).
//
// It finds what "one runner" and "never lost" forbid:
//   - two runners: a line of a token older than one already seen;
//   - a step back or a skip within one runner: n not one more than the
//     line before of the same token;
//   - a loss at a handoff above the allowed: the new runner starts from a
//     restored n below the old runner's last logged n by more than MaxLoss
//     (the counter writes its state before it logs, so a restored n one
//     above the last logged is no error).
package countercheck

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Handoff is one change of runner seen in the log.
type Handoff struct {
	FromToken, ToToken int64
	// LastN is the last n the old runner logged; FirstN the first n the new
	// one logged. Loss is LastN - (FirstN - 1): the counts the new runner
	// did not restore (0 after a graceful handoff).
	LastN, FirstN, Loss int64
	// GapMS is the time between the two lines.
	GapMS int64
}

// Report is what Check found.
type Report struct {
	Lines    int
	Handoffs []Handoff
	// Violations are the broken rules, each naming its line; empty when
	// the log is clean.
	Violations []string
}

// Check reads a counter log and checks it, allowing a loss of maxLoss
// counts at each handoff. It returns an error only for a line that does
// not parse or a read error.
func Check(r io.Reader, maxLoss int64) (Report, error) {
	var rep Report
	var token, last, lastMS int64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rep.Lines++
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			return rep, fmt.Errorf("line %d %q: want \"token n unix-ms\"", rep.Lines, sc.Text())
		}
		var v [3]int64
		for i := range f {
			x, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				return rep, fmt.Errorf("line %d %q: %v", rep.Lines, sc.Text(), err)
			}
			v[i] = x
		}
		t, n, ms := v[0], v[1], v[2]
		switch {
		case rep.Lines == 1:
		case t < token:
			rep.Violations = append(rep.Violations, fmt.Sprintf("line %d: token %d after token %d: two runners", rep.Lines, t, token))
			continue // judge the rest against the newest runner
		case t == token && n != last+1:
			rep.Violations = append(rep.Violations, fmt.Sprintf("line %d: n %d after %d under token %d: want %d", rep.Lines, n, last, t, last+1))
		case t > token:
			h := Handoff{FromToken: token, ToToken: t, LastN: last, FirstN: n, Loss: last - (n - 1), GapMS: ms - lastMS}
			rep.Handoffs = append(rep.Handoffs, h)
			if h.Loss > maxLoss {
				rep.Violations = append(rep.Violations, fmt.Sprintf("line %d: token %d restarted at n %d after %d: lost %d counts, over %d", rep.Lines, t, n, last, h.Loss, maxLoss))
			}
			if h.Loss < -1 {
				rep.Violations = append(rep.Violations, fmt.Sprintf("line %d: token %d restarted at n %d after %d: a skip ahead", rep.Lines, t, n, last))
			}
		}
		token, last, lastMS = t, n, ms
	}
	return rep, sc.Err()
}
