package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// logFinding is one kind of warning or error in the members' logs.
type logFinding struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Count int    `json:"count"`
	First string `json:"first"` // file:line of the first occurrence
}

// scanMemberLogs counts WARN and ERROR lines (and lines that are not JSON,
// such as panics) in the members' logs, by message.
func scanMemberLogs(dir string) ([]logFinding, error) {
	// Members are m1.. (latency, bulk) and s1.. (scale), one log per start.
	var files []string
	for _, pat := range []string{"m*.log", "s*.log"} {
		f, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		files = append(files, f...)
	}
	sort.Strings(files)
	byKey := make(map[string]*logFinding)
	var order []string
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		line := 0
		for sc.Scan() {
			line++
			text := sc.Text()
			if strings.TrimSpace(text) == "" {
				continue
			}
			var rec struct {
				Level string `json:"level"`
				Msg   string `json:"msg"`
			}
			if err := json.Unmarshal([]byte(text), &rec); err != nil {
				rec.Level, rec.Msg = "NOT-JSON", text
				if len(rec.Msg) > 120 {
					rec.Msg = rec.Msg[:120]
				}
			}
			if rec.Level != "WARN" && rec.Level != "ERROR" && rec.Level != "NOT-JSON" {
				continue
			}
			k := rec.Level + "\x00" + rec.Msg
			lf := byKey[k]
			if lf == nil {
				lf = &logFinding{Level: rec.Level, Msg: rec.Msg, First: fmt.Sprintf("%s:%d", f, line)}
				byKey[k] = lf
				order = append(order, k)
			}
			lf.Count++
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	out := make([]logFinding, 0, len(order))
	for _, k := range order {
		out = append(out, *byKey[k])
	}
	return out, nil
}

// etcdFinding is one kind of warning or error in etcd's log.
type etcdFinding struct {
	Level   string  `json:"level"`
	Msg     string  `json:"msg"`
	Count   int     `json:"count"`
	MaxTook float64 `json:"max_took_ms,omitempty"` // of the lines that say how long they took
	First   string  `json:"first_ts"`
}

// scanEtcdLog counts etcd's warn and error lines by message; for slow
// requests it keeps the longest "took".
func scanEtcdLog(path string) ([]etcdFinding, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	byKey := make(map[string]*etcdFinding)
	var order []string
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			TS    string `json:"ts"`
			Took  string `json:"took"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || (rec.Level != "warn" && rec.Level != "error") {
			continue
		}
		k := rec.Level + "\x00" + rec.Msg
		f := byKey[k]
		if f == nil {
			f = &etcdFinding{Level: rec.Level, Msg: rec.Msg, First: rec.TS}
			byKey[k] = f
			order = append(order, k)
		}
		f.Count++
		if d, err := time.ParseDuration(rec.Took); err == nil {
			f.MaxTook = max(f.MaxTook, float64(d)/float64(time.Millisecond))
		}
	}
	out := make([]etcdFinding, 0, len(order))
	for _, k := range order {
		out = append(out, *byKey[k])
	}
	return out, sc.Err()
}
