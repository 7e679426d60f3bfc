package client_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/etsi/client"
	"qkdkms/etsi/internal/memkme"
	"qkdkms/etsi/pki"
)

type env struct {
	world  *memkme.World
	ca     *pki.CA
	dir    string
	a, b   *httptest.Server
	caFile string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{world: memkme.NewWorld("A", "B"), dir: t.TempDir()}
	ca, err := pki.Init(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	e.ca, e.caFile = ca, filepath.Join(e.dir, "ca.crt")
	start := func(kme string) *httptest.Server {
		leaf, err := ca.IssueNode("node-"+kme, kme, nil)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := leaf.TLS()
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(etsi.NewHandler(e.world.Site(kme), etsi.Options{}))
		srv.TLS = pki.ServerConfig(cert, ca.Pool())
		srv.EnableHTTP2 = true
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	e.a, e.b = start("A"), start("B")
	return e
}

func (e *env) sae(t testing.TB, id string) (certFile, keyFile string) {
	t.Helper()
	leaf, err := e.ca.IssueSAE(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.Write(e.dir, id); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(e.dir, id+".crt"), filepath.Join(e.dir, id+".key")
}

func (e *env) client(t testing.TB, url, id string) *client.Client {
	t.Helper()
	cf, kf := e.sae(t, id)
	c, err := client.NewFromFiles(url, cf, kf, e.caFile, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (e *env) connect(t testing.TB, master, slave string, keys int) {
	t.Helper()
	c := etsi.ConnectionInfo{SourceKME: "A", TargetKME: "B", MasterSAE: master, SlaveSAE: slave,
		KeySize: 256, MaxKeyCount: 1 << 20, MaxKeyPerRequest: 8, MaxSAEIDCount: 1, MinKeySize: 64, MaxKeySize: 512}
	if err := e.world.Site("A").RegisterConnection(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	mat := make([]byte, keys*32)
	for i := range mat {
		mat[i] = byte(i*7 + i/256)
	}
	if err := e.world.Fill(master, slave, mat); err != nil {
		t.Fatal(err)
	}
}

func TestClient(t *testing.T) {
	e := newEnv(t)
	e.connect(t, "ghi", "jkl", 16)
	ctx := context.Background()
	m, s, x := e.client(t, e.a.URL, "ghi"), e.client(t, e.b.URL, "jkl"), e.client(t, e.b.URL, "xyz")

	st, err := m.Status(ctx, "jkl")
	if err != nil {
		t.Fatal(err)
	}
	if st.StoredKeyCount != 16 || st.KeySize != 256 || st.SourceKMEID != "A" || st.SlaveSAEID != "jkl" {
		t.Fatalf("status %+v", st)
	}
	keys, err := m.EncKeys(ctx, "jkl", etsi.KeyRequest{Number: 3, Size: 128})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || len(keys[0].Bytes) != 16 {
		t.Fatalf("enc keys %v", keys)
	}
	more, err := m.EncKeysGet(ctx, "jkl", 0, 0)
	if err != nil || len(more) != 1 || len(more[0].Bytes) != 32 {
		t.Fatalf("EncKeysGet: %v %v", more, err)
	}
	// an SAE not named gets the typed 400 of an unknown key and the key stays fetchable
	_, err = x.DecKeys(ctx, "ghi", keys[0].ID)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.StatusCode != 400 || !errors.Is(err, client.ErrBadRequest) || ae.Message == "" {
		t.Fatalf("outsider dec_keys: %v", err)
	}
	got, err := s.DecKeys(ctx, "ghi", keys[0].ID, keys[1].ID, keys[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if got[i].ID != keys[i].ID || !bytes.Equal(got[i].Bytes, keys[i].Bytes) {
			t.Errorf("key %d differs", i)
		}
	}
	one, err := s.DecKeyGet(ctx, "ghi", strings.ToUpper(more[0].ID))
	if err != nil || !bytes.Equal(one.Bytes, more[0].Bytes) || one.ID != more[0].ID {
		t.Fatalf("DecKeyGet: %v %v", one, err)
	}
	_, err = s.DecKeys(ctx, "ghi", keys[0].ID)
	if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.Message != etsi.MsgKeysNotFound || !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("second fetch: %v", err)
	}
	_, err = m.EncKeys(ctx, "jkl", etsi.KeyRequest{Size: 100})
	if !errors.As(err, &ae) || ae.Message != etsi.MsgSizeMultipleOf8 {
		t.Fatalf("size 100: %v", err)
	}
	_, err = m.EncKeys(ctx, "jkl", etsi.KeyRequest{Number: 8, Size: 512})
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("more than stored: %v", err)
	}
	if _, err := client.New("http://127.0.0.1:1", &tls.Config{}, client.Options{}); err == nil {
		t.Fatal("plain http URL accepted")
	}
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := client.RunCLI(context.Background(), args, &out, &errb)
	t.Logf("qkdkms sae %s → %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

func TestCLI(t *testing.T) {
	e := newEnv(t)
	e.connect(t, "ghi", "jkl", 8)
	mc, mk := e.sae(t, "ghi")
	sc, sk := e.sae(t, "jkl")
	code, out, _ := runCLI(t, "status", "--kme", e.a.URL, "--cert", mc, "--key", mk, "--ca", e.caFile, "jkl")
	var st etsi.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.StoredKeyCount != 8 {
		t.Fatalf("status: %d %s", code, out)
	}
	// flags after the positional SAE ID
	code, out, _ = runCLI(t, "enc", "--kme", e.a.URL, "--cert", mc, "--key", mk, "--ca", e.caFile, "jkl", "--number", "2", "--size", "64")
	var kc etsi.KeyContainer
	if code != 0 || json.Unmarshal([]byte(out), &kc) != nil || len(kc.Keys) != 2 {
		t.Fatalf("enc: %d %s", code, out)
	}
	if b, err := base64.StdEncoding.DecodeString(kc.Keys[0].Key); err != nil || len(b) != 8 {
		t.Fatalf("enc key %q: %v", kc.Keys[0].Key, err)
	}
	code, out, _ = runCLI(t, "dec", "--kme", e.b.URL, "--cert", sc, "--key", sk, "--ca", e.caFile, "ghi",
		"--key-id", kc.Keys[0].KeyID, "--key-id", kc.Keys[1].KeyID)
	var dc etsi.KeyContainer
	if code != 0 || json.Unmarshal([]byte(out), &dc) != nil || len(dc.Keys) != 2 || dc.Keys[1].Key != kc.Keys[1].Key {
		t.Fatalf("dec: %d %s", code, out)
	}
	// refusal: exit 1, the ETSI Error object on stdout
	code, out, _ = runCLI(t, "dec", "--get", "--kme", e.b.URL, "--cert", sc, "--key", sk, "--ca", e.caFile, "ghi", "--key-id", kc.Keys[0].KeyID)
	var ee etsi.Error
	if code != 1 || json.Unmarshal([]byte(out), &ee) != nil || ee.Message != etsi.MsgKeysNotFound {
		t.Fatalf("second dec: %d %s", code, out)
	}
	for _, bad := range [][]string{
		{},
		{"frobnicate"},
		{"status", "--kme", e.a.URL, "--cert", mc, "--key", mk, "--ca", e.caFile},
		{"status", "--kme", e.a.URL, "--cert", mc, "--key", mk, "--ca", e.caFile, "a", "b"},
		{"dec", "--kme", e.b.URL, "--cert", sc, "--key", sk, "--ca", e.caFile, "ghi"},
		{"status", "--kme", e.a.URL, "--cert", mc, "--key", mk, "--ca", e.caFile, "--key-id", "x", "jkl"},
		{"enc", "--kme", "http://" + strings.TrimPrefix(e.a.URL, "https://"), "--cert", mc, "--key", mk, "--ca", e.caFile, "jkl"},
		{"enc", "--bogus", "jkl"},
	} {
		if code, _, _ := runCLI(t, bad...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
}

// BenchmarkHandlerRoundTrip measures the ETSI layer alone (handlers, TLS,
// JSON, HTTP/2 keep-alive) over the in-memory backend: 32 concurrent
// master SAEs call enc_keys (1 key, 256 bits) at site A while their slaves
// call dec_keys at site B. The replicated system's figure is node's
// BenchmarkETSIRoundTrip.
func BenchmarkHandlerRoundTrip(b *testing.B) {
	e := newEnv(b)
	const pairs = 32
	type pair struct {
		m, s   *client.Client
		mn, sn string
	}
	ps := make([]pair, pairs)
	for i := range ps {
		mn, sn := fmt.Sprintf("m%02d", i), fmt.Sprintf("s%02d", i)
		e.connect(b, mn, sn, b.N/pairs+2)
		ps[i] = pair{e.client(b, e.a.URL, mn), e.client(b, e.b.URL, sn), mn, sn}
	}
	var mu sync.Mutex
	var lat []time.Duration
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range ps {
		n := b.N / pairs
		if i < b.N%pairs {
			n++
		}
		wg.Add(1)
		go func(p pair, n int) {
			defer wg.Done()
			local := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				k, err := p.m.EncKeys(ctx, p.sn, etsi.KeyRequest{Number: 1, Size: 256})
				if err != nil {
					b.Error(err)
					return
				}
				got, err := p.s.DecKeys(ctx, p.mn, k[0].ID)
				if err != nil || !bytes.Equal(got[0].Bytes, k[0].Bytes) {
					b.Error("mismatch", err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}(ps[i], n)
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(len(lat))/el.Seconds(), "pairs/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
