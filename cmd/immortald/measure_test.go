package main_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// authCount reads etcd's count of Authenticate calls answered OK.
func authCount(t *testing.T, e *env) float64 {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(e.s.RootCert, e.s.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(e.s.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}}}
	resp, err := c.Get(e.s.Endpoint + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`grpc_server_handled_total\{grpc_code="OK",grpc_method="Authenticate"[^}]*\} (\S+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestMeasureAuth checks that a member that runs as a user with a password
// authenticates to etcd once per connection, not once per lease renewal:
// over 60 s at TTL 2 s (240 renewals, on one keep-alive stream) etcd counts
// at most 2 Authenticate calls (a stream that broke and was opened again).
// Before the renewals shared a stream it counted 2 per second. With
// IMMORTALD_MEASURE_AUTH=1 it also measures a member that runs as the user
// named by its certificate (no Authenticate at all).
//
//	go test -run TestMeasureAuth -v ./cmd/immortald
func TestMeasureAuth(t *testing.T) {
	e := newEnv(t)
	e.s.MustCtl(t, "user", "add", "cnuser", "--no-password")
	e.s.MustCtl(t, "user", "grant-role", "cnuser", "immortald")
	c, k := e.certs("m", e.s.CA)
	modes := []string{"password"}
	if os.Getenv("IMMORTALD_MEASURE_AUTH") != "" {
		modes = append(modes, "certificate")
	}
	const window = 60 * time.Second
	for _, mode := range modes {
		args := []string{"run", "--id", "m-" + mode, "--lease-ttl", "2s", "--checkpoint-interval", "1s", "--http-addr", "", "--log-format", "json"}
		if mode == "password" {
			args = append(args, append(e.flags(c, k), "--etcd-password-file", e.pwFile)...)
		} else {
			cc, kk := e.s.MustClientCert(t, "cnuser")
			args = append(args, "--etcd-endpoints", e.s.Endpoint, "--etcd-cacert", e.s.CAFile, "--etcd-cert", cc, "--etcd-key", kk)
		}
		p := e.start(mode, args)
		time.Sleep(5 * time.Second)
		before := authCount(t, e)
		time.Sleep(window)
		after := authCount(t, e)
		p.signal(syscall.SIGTERM)
		p.wait(t)
		lost := len(regexp.MustCompile("session lost").FindAllString(p.stderr.String(), -1))
		t.Logf("%s: %.0f Authenticate calls in %s (%.2f/s) at TTL 2s; sessions lost: %d", mode, after-before, window, (after-before)/window.Seconds(), lost)
		if n := after - before; n > 2 {
			t.Errorf("%s: %.0f Authenticate calls in %s; want at most 2 (one per keep-alive stream opened, not one per renewal)", mode, n, window)
		}
		if lost > 0 {
			t.Errorf("%s: %d sessions lost", mode, lost)
		}
	}
}
