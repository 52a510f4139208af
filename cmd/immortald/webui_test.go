package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The live page, in a real browser, of a real 3-member cluster (`immortald
// run` processes, each a watchdog and its member): it shows Adam's holder;
// when that member is SIGTERMed the page shows Adam on another member within
// a second of the signal, logs it as handed off, and the age it shows never
// goes back. A screenshot of the page, with a few lives and the three
// members, is saved in $IMMORTALD_TEST_ARTIFACTS (default: the test's
// temporary directory), and, with IMMORTALD_UPDATE_SCREENSHOT=1, as
// docs/ui.png.
//
// The browser is Debian's chromium, headless; the test skips when it is not
// on PATH. It loads only pages of 127.0.0.1 and sends nothing anywhere else:
// no background networking or component updates, every host name unresolved
// and every other address through a proxy that is not there.
func TestLivePageInABrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("headless Chromium is not on PATH: this test needs Debian's chromium package (apt-get install -y chromium)")
	}
	dir := t.TempDir()
	counter := buildCounter(t, dir)
	counterLog := filepath.Join(dir, "counter.log")
	c := newKindCluster(t, dir, fmt.Sprintf(`kinds:
  counter:
    command: [%q, "--interval", "100ms"]
    env: {COUNTER_LOG: %q}
    stop_grace: 2s
`, counter, counterLog), "2s", "200ms")
	procs := map[string]*proc{}
	for _, id := range []string{"m1", "m2", "m3"} {
		procs[id] = c.member(id)
	}
	c.waitFor("3 members registered", func() bool { return len(c.memberPIDs()) == 3 })

	page := newPage(t, browser)
	page.open("http://" + procs["m1"].http + "/ui")
	page.waitFor("3 ready members on the page", `document.querySelectorAll('#members tr[data-ready="true"]').length === 3 && document.querySelector('#status').dataset.state === 'live'`)

	c.cli("start", "Adam")
	const holderJS = `((document.querySelector('tr[data-life="Adam"]') || {dataset: {}}).dataset.holder || '')`
	page.waitFor("Adam's holder on the page", holderJS+` !== ''`)
	time.Sleep(1500 * time.Millisecond) // a placement handoff would come within a second
	holder := page.eval(holderJS).(string)
	if procs[holder] == nil {
		t.Fatalf("the page shows Adam on %q, not one of the members", holder)
	}
	if procs[holder].http == procs["m1"].http { // the page must outlive the holder
		other := map[string]string{"m1": "m2"}[holder]
		page.open("http://" + procs[other].http + "/ui")
		page.waitFor("Adam's holder on "+other+"'s page", holderJS+` === '`+holder+`'`)
	}
	page.eval(`window.__changes = []; window.__ages = [];
		new MutationObserver(() => {
			const r = document.querySelector('tr[data-life="Adam"]');
			if (r) window.__changes.push([Date.now(), r.dataset.holder]);
		}).observe(document.querySelector('#lives tbody'), {subtree: true, attributes: true, attributeFilter: ['data-holder']});
		setInterval(() => {
			const r = document.querySelector('tr[data-life="Adam"]');
			if (r) window.__ages.push([Date.now(), +r.querySelector('td.age').dataset.shownMs, +r.dataset.ageMs, +r.dataset.lifeId]);
		}, 50);
		true`)
	time.Sleep(time.Second) // ages ticking before the stop

	stopped := time.Now()
	procs[holder].signal(syscall.SIGTERM)
	var moved []any
	page.waitFor("Adam's holder to change on the page", fmt.Sprintf(`window.__changes.some(c => c[1] !== '' && c[1] !== %q)`, holder))
	moved = page.eval(fmt.Sprintf(`window.__changes.find(c => c[1] !== '' && c[1] !== %q)`, holder)).([]any)
	latency := time.UnixMilli(int64(moved[0].(float64))).Sub(stopped)
	t.Logf("SIGTERM of %s to Adam shown on %s on the page: %v", holder, moved[1], latency)
	if latency > time.Second {
		t.Errorf("the page showed Adam's new holder %v after the SIGTERM of %s, want within 1s", latency, holder)
	}
	if code := procs[holder].wait(t); code != 0 {
		t.Errorf("%s exited %d after SIGTERM", holder, code)
	}
	time.Sleep(1500 * time.Millisecond) // ages ticking after the move
	page.waitFor("Adam handed off in the page's log", fmt.Sprintf(`!!document.querySelector('#log li[data-event="handed off"][data-life="Adam"]') && !document.querySelector('#log li[data-event="failed over"]')`))
	ages := page.eval(`window.__ages`).([]any)
	var first, last []any
	for i, a := range ages {
		s := a.([]any)
		if i == 0 {
			first = s
		} else if prev := ages[i-1].([]any); s[3] == prev[3] && (s[1].(float64) < prev[1].(float64) || s[2].(float64) < prev[2].(float64)) {
			t.Errorf("Adam's age went back on the page: shown %v ms, stored %v ms, then shown %v ms, stored %v ms", prev[1], prev[2], s[1], s[2])
		}
		last = s
	}
	if len(ages) < 20 || last[1].(float64) <= first[1].(float64) {
		t.Fatalf("%d samples of Adam's age, from %v to %v: want it ticking", len(ages), first, last)
	}
	t.Logf("Adam's age on the page, %d samples over %v: shown %v to %v ms, never back", len(ages),
		time.Duration(last[0].(float64)-first[0].(float64))*time.Millisecond, first[1], last[1])

	// A picture for the README: three members, a few lives, one of them a
	// command life with its child.
	procs[holder] = c.member(holder)
	for _, name := range []string{"Eve", "Cain", "Abel"} {
		c.cli("start", name)
	}
	c.cli("start", "job", "--kind", "counter")
	page.waitFor("3 members and 5 lives running", `document.querySelectorAll('#members tr[data-ready="true"]').length === 3 &&
		document.querySelectorAll('#lives tr[data-state="running"]').length === 5 &&
		/running/.test(document.querySelector('tr[data-life="job"] td.child').textContent)`)
	time.Sleep(1500 * time.Millisecond) // placement settles

	// A crash: SIGKILL of the member process of Adam's holder. Its
	// watchdog revokes its lease at once (and starts it again): the page
	// says Adam's holder lost its lease, and a failover (or a restart on
	// the same member id), not a handoff.
	holder = page.eval(holderJS).(string)
	before := page.eval(`document.querySelectorAll('#log li[data-life="Adam"]').length`).(float64)
	if err := syscall.Kill(c.memberPID(holder), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Adam's log entries since the kill, oldest first: [event, detail].
	since := fmt.Sprintf(`(() => {
		const all = [...document.querySelectorAll('#log li[data-life="Adam"]')];
		return all.slice(0, all.length - %v).reverse().map(e => [e.dataset.event, (e.querySelector('.detail') || {}).textContent || '']);
	})()`, before)
	page.waitFor("Adam running again after the crash of "+holder, since+`.some(e => e[0] === 'failed over' || e[0] === 'restarted')`)
	var crash []string
	for _, e := range page.eval(since).([]any) {
		crash = append(crash, strings.Join([]string{e.([]any)[0].(string), e.([]any)[1].(string)}, ": "))
	}
	t.Logf("after the SIGKILL of %s's member process, the page logged for Adam: %q", holder, crash)
	if len(crash) < 2 || crash[0] != "stopped: "+holder+"'s lease ended" ||
		(!strings.HasPrefix(crash[1], "failed over: ") && !strings.HasPrefix(crash[1], "restarted: ")) {
		t.Errorf("the page logged %q for Adam after a crash of %s; want stopped as its lease ended, then failed over (or restarted)", crash, holder)
	}
	page.waitFor("3 members and 5 lives running after the crash", `document.querySelectorAll('#members tr[data-ready="true"]').length === 3 &&
		document.querySelectorAll('#lives tr[data-state="running"]').length === 5`)
	time.Sleep(2500 * time.Millisecond) // placement settles; ages tick
	if html := page.eval(`document.documentElement.outerHTML`).(string); strings.Contains(html, counterLog) || strings.Contains(html, counter) {
		t.Errorf("the page shows the counter kind's command or environment")
	}
	png := page.screenshot()
	artifacts := os.Getenv("IMMORTALD_TEST_ARTIFACTS")
	if artifacts == "" {
		artifacts = dir
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifacts, "ui.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page: %s (%d bytes; set IMMORTALD_TEST_ARTIFACTS to keep it)", shot, len(png))
	if os.Getenv("IMMORTALD_UPDATE_SCREENSHOT") == "1" {
		docs := filepath.Join("..", "..", "docs")
		if err := os.MkdirAll(docs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(docs, "ui.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("wrote docs/ui.png")
	}
}

// page is a tab of a headless Chromium, closed (and the browser with it) at
// the end of the test.
type page struct {
	t   *testing.T
	ctx context.Context
}

func newPage(t *testing.T, browser string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.NoSandbox, // root in a container has no user namespace for the sandbox
		chromedp.WindowSize(1400, 1000),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("disable-gpu", true),
		// Nothing leaves this machine: no background requests, no DNS, and
		// every address but the loopback one (bypassed by default) through
		// a proxy on a port where nothing listens.
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "Translate,BlinkGenPropertyTrees,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.Flag("proxy-server", "http://127.0.0.1:9"),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		if err := chromedp.Cancel(ctx); err != nil { // closes the browser, waits for it, removes its profile
			t.Logf("closing the browser: %v", err)
		}
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", browser, err)
	}
	return &page{t: t, ctx: ctx}
}

func (p *page) open(url string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, bound)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		p.t.Fatalf("open %s: %v", url, err)
	}
}

// eval evaluates js in the page and returns its value (as JSON decodes it).
func (p *page) eval(js string) any {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, bound)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[any](js))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitFor evaluates the boolean js every 20 ms until it is true.
func (p *page) waitFor(what, js string) {
	p.t.Helper()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if ok, _ := p.eval(js).(bool); ok {
			return
		}
		if time.Since(start) > bound {
			p.t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
	}
}

// screenshot is a PNG of the whole page.
func (p *page) screenshot() []byte {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, bound)
	defer cancel()
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}
