package observe

import (
	"bufio"
	"bytes"
	"io"
	"strconv"
	"strings"
)

// ParseMetrics reads a Prometheus text page, such as a member's or etcd's
// /metrics, and returns its unlabelled samples by name. Comments, labelled
// samples and lines that do not parse are skipped.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' || bytes.IndexByte(line, '{') >= 0 {
			continue
		}
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		out[f[0]] = v
	}
	return out, sc.Err()
}
