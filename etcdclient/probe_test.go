package etcdclient_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/immortald/immortald/etcdclient"
	"github.com/immortald/immortald/internal/etcdtest"
)

func probe(t *testing.T, ep string, tlsCfg *tls.Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return etcdclient.Probe(ctx, ep, tlsCfg)
}

func TestProbeNamesTheCause(t *testing.T) {
	srv := etcdtest.MustStart(t)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	// A listener that never accepts: the kernel completes the handshake, and
	// nothing ever answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })

	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	webTLS := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(webTLS.Close)

	tests := []struct {
		name, ep string
		tls      *tls.Config
		want     string // "" means it answers
	}{
		{name: "etcd", ep: srv.Endpoint()},
		{name: "etcd with http://", ep: "http://" + srv.Endpoint()},
		{name: "refused", ep: closedAddr, want: "connection refused"},
		{name: "silent", ep: silent.Addr().String(), want: "no answer in time"},
		{name: "an HTTP server", ep: strings.TrimPrefix(web.URL, "http://"), want: "not an etcd server"},
		{name: "TLS to a plain etcd", ep: "https://" + srv.Endpoint(), tls: &tls.Config{InsecureSkipVerify: true}, want: "does it speak TLS"},
		{name: "untrusted certificate", ep: "https://" + strings.TrimPrefix(webTLS.URL, "https://"), want: "TLS handshake failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := probe(t, tt.ep, tt.tls)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Probe(%s) = %v, want nil", tt.ep, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Probe(%s) = nil, want an error with %q", tt.ep, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.ep) {
				t.Errorf("Probe(%s) = %q, want it to name the endpoint and contain %q", tt.ep, err, tt.want)
			}
		})
	}
}
