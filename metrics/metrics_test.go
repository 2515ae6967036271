package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLintClean runs the linter `promtool check metrics` uses over every
// family, with a service's series present.
func TestLintClean(t *testing.T) {
	m := New("v1")
	m.ForService("echo", "echo").Endpoint("tcp:127.0.0.1:7")
	extra := prometheus.NewGauge(prometheus.GaugeOpts{Name: "superd_test_users", Help: "Users."})
	m.Registerer("echo", "echo").MustRegister(extra)
	extra.Set(1)
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestSeriesExistFromStartup: every reason of a service, both reload
// results, and build info are there before anything happens.
func TestSeriesExistFromStartup(t *testing.T) {
	m := New("v1.2.3")
	m.ForService("s", "echo")
	want := map[string]int{
		"superd_connections_rejected_total":    len(RejectReasons),
		"superd_connections_dropped_total":     len(DropReasons),
		"superd_config_reloads_total":          2,
		"superd_build_info":                    1,
		"superd_factory_up":                    1,
		"superd_connections_active":            1,
		"superd_config_last_reload_successful": 1,
		"superd_cluster_connected":             1,
	}
	for name, n := range want {
		if got := testutil.CollectAndCount(m.Registry, name); got != n {
			t.Errorf("%s has %d series, want %d", name, got, n)
		}
	}
	if got := testutil.ToFloat64(m.LastReloadOK); got != 1 {
		t.Errorf("last_reload_successful starts at %v", got)
	}
}

func TestDeleteRemovesEveryServiceSeries(t *testing.T) {
	m := New("v1")
	a, b := m.ForService("a", "echo"), m.ForService("b", "echo")
	a.Endpoint("tcp:x")
	users := func() prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "superd_test_users", Help: "Users."})
	}
	ua, ub := users(), users()
	m.Registerer("a", "echo").MustRegister(ua)
	m.Registerer("b", "echo").MustRegister(ub)
	ua.Set(3)
	ub.Set(1)
	a.Delete()
	_ = b
	if got := testutil.CollectAndCount(m.ConnectionsRejected); got != len(RejectReasons) {
		t.Errorf("rejected series after delete: %d", got)
	}
	if got := testutil.CollectAndCount(m.ConnectionsTotal); got != 0 {
		t.Errorf("connections_total series after delete: %d", got)
	}
	if got := testutil.CollectAndCount(m.Registry, "superd_test_users"); got != 1 {
		t.Errorf("service family series after delete: %d", got)
	}
	// The name is free again: a new service "a" registers its own.
	if err := m.Registerer("a", "echo").Register(users()); err != nil {
		t.Errorf("registering again after delete: %v", err)
	}
}

// TestRegistererShared: the instances of one service (a reload that
// replaces it runs two) share their families; their series carry the
// service label; another service's are its own.
func TestRegistererShared(t *testing.T) {
	m := New("v1")
	users := func() prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "superd_test_users", Help: "Users."})
	}
	first := users()
	m.Registerer("a", "chat").MustRegister(first)
	first.Set(2)
	err := m.Registerer("a", "chat").Register(users())
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || are.ExistingCollector != first {
		t.Fatalf("second instance: %v; want AlreadyRegisteredError holding the first collector", err)
	}
	if err := m.Registerer("b", "chat").Register(users()); err != nil {
		t.Fatalf("another service: %v", err)
	}
	want := `
# HELP superd_test_users Users.
# TYPE superd_test_users gauge
superd_test_users{service="a"} 2
superd_test_users{service="b"} 0
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "superd_test_users"); err != nil {
		t.Error(err)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	m := New("v1")
	var notReady []string
	srv := httptest.NewServer(m.Handler(func() []string { return notReady }))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d when ready", code)
	}
	notReady = []string{"shutting down"}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz %d %q when not ready", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "superd_build_info") {
		t.Errorf("/metrics %d", code)
	}
}

// TestDeleteByFactoryAndByName: two instances of service "web" of
// different factories (a reload replacing one with the other). Delete and
// DeleteEndpoint of one remove only the series labelled with its factory;
// the series labelled by service name alone (handshakes in progress,
// certificate expiry), which the other holds too, go with DeleteName and
// DeleteNameEndpoint.
func TestDeleteByFactoryAndByName(t *testing.T) {
	m := New("v1")
	const ep = "tls:127.0.0.1:443"
	old, next := m.ForService("web", "alpha"), m.ForService("web", "beta")
	old.Endpoint(ep)
	next.Endpoint(ep)
	old.CertificateExpiry(ep, map[string]float64{"web.example": 1})
	next.CertificateExpiry(ep, map[string]float64{"web.example": 2})
	old.DeleteEndpoint(ep)
	old.Delete()
	if got := testutil.CollectAndCount(m.ConnectionsTotal); got != 1 {
		t.Errorf("connections_total: %d series after the old instance's delete, want 1", got)
	}
	if got := testutil.CollectAndCount(m.FactoryUp); got != 1 {
		t.Errorf("factory_up: %d series after the old instance's delete, want 1", got)
	}
	if got := testutil.CollectAndCount(m.CertExpiry); got != 1 {
		t.Errorf("expiry: %d series after the old instance's delete, want 1", got)
	}
	next.Handshakes.Inc()
	if got := testutil.CollectAndCount(m.TLSHandshakes); got != 1 || testutil.ToFloat64(m.TLSHandshakes) != 1 {
		t.Errorf("handshakes: %d series after the old instance's delete, want 1 holding the successor's count", got)
	}
	next.DeleteNameEndpoint(ep)
	if got := testutil.CollectAndCount(m.CertExpiry); got != 0 {
		t.Errorf("expiry: %d series after DeleteNameEndpoint", got)
	}
	next.CertificateExpiry(ep, map[string]float64{"web.example": 2})
	next.DeleteName()
	if got := testutil.CollectAndCount(m.CertExpiry) + testutil.CollectAndCount(m.TLSHandshakes); got != 0 {
		t.Errorf("%d expiry and handshakes series after DeleteName", got)
	}
}
