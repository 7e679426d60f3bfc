// Package etsitest is a conformance suite for an ETSI GS QKD 014 KME pair
// as qkdkms serves it (etsi/API.md): every request rule as a table test over
// real HTTPS with real client certificates — status code, message, and that
// no pool or assignment changed — and the happy paths (enc_keys at the
// master site, dec_keys at the slave site, equal bytes, second fetch
// refused, multicast erase, wrong SAE refused while the key stays
// fetchable, insufficient keys, the reverse direction).
//
// The suite registers its own connections under fresh SAE IDs, so it can
// run more than once against the same system. While it runs no other key
// material may enter those connections' pools (it checks stored_key_count
// exactly).
package etsitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"qkdkms/etsi"
)

// Site is one KME as the suite reaches it.
type Site struct {
	URL   string // https://host:port, no trailing slash; any node of the site
	KMEID string
}

// Harness is what the suite needs from the system under test.
type Harness struct {
	// Master is the site of the master SAEs, Slave the peer site.
	Master, Slave Site
	// RootCAs verifies the KMEs' server certificates.
	RootCAs *x509.CertPool
	// ClientCert returns a client certificate carrying SAE ID sae, issued
	// by a CA the KMEs trust (pki.CA.IssueSAE). Called for IDs that have
	// no connection too.
	ClientCert func(sae string) (tls.Certificate, error)
	// Register registers a connection at both sites (SourceKME is the
	// master's site). StoredKeyCount is zero and to be ignored.
	Register func(ctx context.Context, c etsi.ConnectionInfo) error
	// Fill appends identical key material to the pool of connection
	// master→slave at both sites (admin import).
	Fill func(ctx context.Context, master, slave string, material []byte) error
	// Levels returns every quantity a request could change — at least
	// the pool level of each connection at each site and the number of
	// issued keys not yet fetched by every slave — keyed by any label.
	// The suite only compares snapshots for equality.
	Levels func(ctx context.Context) (map[string]int, error)
	// NoIdentityCert, optional, returns a certificate the KMEs trust that
	// carries no SAE ID (e.g. a KME node certificate).
	NoIdentityCert func() (tls.Certificate, error)
}

const (
	keySize1   = 256
	fillKeys1  = 128
	maxPerReq1 = 4
	maxSAE1    = 2
	minSize1   = 64
	maxSize1   = 1024
)

var (
	uuidRE   = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	statusFs = []string{"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
		"stored_key_count", "max_key_count", "max_key_per_request", "max_key_size", "min_key_size",
		"max_SAE_ID_count", "status_extension"}
)

type suite struct {
	h       Harness
	ctx     context.Context
	mu      sync.Mutex
	clients map[string]*http.Client
	// SAE IDs of this run
	m, s, s2, s3, x, ms, ss, em, es, rm, rs string
	conns                                   map[string]etsi.ConnectionInfo // by master
	filled                                  map[string]int                 // bits filled per master
	used                                    map[string]int                 // bits carved per master
	issuedIDs                               map[string]bool
	issuedBits                              map[string]bool
}

// Run runs the suite against h.
func Run(t *testing.T, h Harness) {
	if h.ClientCert == nil || h.Register == nil || h.Fill == nil || h.Levels == nil || h.RootCAs == nil {
		t.Fatal("etsitest: Harness needs RootCAs, ClientCert, Register, Fill and Levels")
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := &suite{h: h, ctx: ctx, clients: map[string]*http.Client{},
		m: "etm-" + id, s: "ets-" + id, s2: "ets2-" + id, s3: "ets3-" + id, x: "etx-" + id,
		ms: "etms-" + id, ss: "etss-" + id, em: "etem-" + id, es: "etes-" + id, rm: "etrm-" + id, rs: "etrs-" + id,
		conns: map[string]etsi.ConnectionInfo{}, filled: map[string]int{}, used: map[string]int{},
		issuedIDs: map[string]bool{}, issuedBits: map[string]bool{}}
	t.Cleanup(func() {
		for _, c := range s.clients {
			c.CloseIdleConnections()
		}
	})
	s.setup(t)
	t.Run("status", s.testStatus)
	t.Run("rules", s.testRules)
	t.Run("happy", s.testHappy)
	t.Run("multicast", s.testMulticast)
	t.Run("key-ID oracle", s.testOracle)
	t.Run("insufficient", s.testInsufficient)
	t.Run("reverse", s.testReverse)
	t.Run("concurrent", s.testConcurrent)
	t.Run("accounting", func(t *testing.T) { s.checkStatus(t, s.m, s.s) })
}

func (s *suite) setup(t *testing.T) {
	t.Helper()
	base := etsi.ConnectionInfo{SourceKME: s.h.Master.KMEID, TargetKME: s.h.Slave.KMEID,
		KeySize: keySize1, MaxKeyCount: 1000, MaxKeyPerRequest: maxPerReq1, MaxSAEIDCount: maxSAE1,
		MinKeySize: minSize1, MaxKeySize: maxSize1}
	reg := func(c etsi.ConnectionInfo, fillBytes int) {
		if err := s.h.Register(s.ctx, c); err != nil {
			t.Fatalf("register %s→%s: %v", c.MasterSAE, c.SlaveSAE, err)
		}
		if c.SlaveSAE == s.s || c.MasterSAE != s.m {
			s.conns[c.MasterSAE] = c
		}
		if fillBytes > 0 {
			mat := make([]byte, fillBytes)
			_, _ = rand.Read(mat)
			if err := s.h.Fill(s.ctx, c.MasterSAE, c.SlaveSAE, mat); err != nil {
				t.Fatalf("fill %s→%s: %v", c.MasterSAE, c.SlaveSAE, err)
			}
			s.filled[c.MasterSAE] += fillBytes * 8
		}
	}
	c := base
	c.MasterSAE, c.SlaveSAE = s.m, s.s
	reg(c, fillKeys1*keySize1/8)
	for _, sl := range []string{s.s2, s.s3} { // for backends that want a connection per multicast slave
		c.SlaveSAE = sl
		reg(c, 0)
	}
	small := base
	small.MasterSAE, small.SlaveSAE, small.MaxSAEIDCount, small.MinKeySize, small.MaxKeySize = s.ms, s.ss, 0, keySize1, keySize1
	reg(small, 2*keySize1/8)
	empty := small
	empty.MasterSAE, empty.SlaveSAE = s.em, s.es
	reg(empty, 0)
	rev := base
	rev.SourceKME, rev.TargetKME, rev.MasterSAE, rev.SlaveSAE, rev.KeySize, rev.MinKeySize = s.h.Slave.KMEID, s.h.Master.KMEID, s.rm, s.rs, 128, 128
	reg(rev, 4*128/8)
}

// client returns an HTTPS client presenting sae's certificate ("" = none,
// "\x00noid" = the harness's NoIdentityCert).
func (s *suite) client(t *testing.T, sae string) *http.Client {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[sae]; ok {
		return c
	}
	cfg := &tls.Config{RootCAs: s.h.RootCAs, MinVersion: tls.VersionTLS12}
	switch sae {
	case "":
	case noID:
		cert, err := s.h.NoIdentityCert()
		if err != nil {
			t.Fatalf("no-identity certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	default:
		cert, err := s.h.ClientCert(sae)
		if err != nil {
			t.Fatalf("certificate for %s: %v", sae, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c := &http.Client{
		Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 4, ForceAttemptHTTP2: true},
		Timeout:   30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // real clients do not follow redirects
		},
	}
	s.clients[sae] = c
	return c
}

const noID = "\x00noid"

type response struct {
	code int
	ct   string
	body []byte
}

type call struct {
	site   *Site
	sae    string
	method string
	path   string // e.g. /api/v1/keys/X/enc_keys
	query  string
	body   []byte
	ctype  string
}

func (s *suite) do(t *testing.T, c call) (response, error) {
	t.Helper()
	u := c.site.URL + c.path
	if c.query != "" {
		u += "?" + c.query
	}
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(s.ctx, c.method, u, body)
	if err != nil {
		t.Fatalf("request %s %s: %v", c.method, u, err)
	}
	if c.ctype != "" {
		req.Header.Set("Content-Type", c.ctype)
	} else if c.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client(t, c.sae).Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{code: resp.StatusCode, ct: resp.Header.Get("Content-Type"), body: b}, nil
}

func (s *suite) mustDo(t *testing.T, c call) response {
	t.Helper()
	r, err := s.do(t, c)
	if err != nil {
		t.Fatalf("%s %s as %q: %v", c.method, c.path, c.sae, err)
	}
	return r
}

func (s *suite) levels(t *testing.T) map[string]int {
	t.Helper()
	l, err := s.h.Levels(s.ctx)
	if err != nil {
		t.Fatalf("levels: %v", err)
	}
	return l
}

func (s *suite) sameLevels(t *testing.T, before map[string]int) {
	t.Helper()
	after := s.levels(t)
	if !maps.Equal(before, after) {
		for _, k := range slices.Sorted(maps.Keys(after)) {
			if before[k] != after[k] {
				t.Errorf("state changed: %s %d → %d", k, before[k], after[k])
			}
		}
		for k := range before {
			if _, ok := after[k]; !ok {
				t.Errorf("state changed: %s disappeared", k)
			}
		}
	}
}

// checkError checks an error answer: JSON content type, an object with a
// non-empty string message and, when present, details as an array of
// objects.
func checkError(t *testing.T, r response, msg string) {
	t.Helper()
	if !strings.HasPrefix(r.ct, "application/json") {
		t.Errorf("error answer %d has Content-Type %q, want application/json", r.code, r.ct)
	}
	var e struct {
		Message *string           `json:"message"`
		Details *[]map[string]any `json:"details"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Message == nil {
		t.Fatalf("error answer %d is not an ETSI Error object: %v: %s", r.code, err, r.body)
	}
	if *e.Message == "" {
		t.Errorf("error answer %d has an empty message", r.code)
	}
	if msg != "" && *e.Message != msg {
		t.Errorf("message %q, want %q", *e.Message, msg)
	}
}

// enc calls enc_keys and checks a 200 answer; it records the keys.
func (s *suite) enc(t *testing.T, site *Site, master, slave, method, query string, body []byte, number, size int) []etsi.KeyObject {
	t.Helper()
	r := s.mustDo(t, call{site: site, sae: master, method: method, path: "/api/v1/keys/" + slave + "/enc_keys", query: query, body: body})
	if r.code != http.StatusOK {
		t.Fatalf("enc_keys %s→%s: %d %s", master, slave, r.code, r.body)
	}
	keys := s.container(t, r, number, size)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used[master] += number * size
	for _, k := range keys {
		if s.issuedIDs[k.KeyID] {
			t.Errorf("I1: key ID %s issued twice", k.KeyID)
		}
		s.issuedIDs[k.KeyID] = true
		if size >= 128 {
			if s.issuedBits[k.Key] {
				t.Errorf("I1: key bits of %s issued twice", k.KeyID)
			}
			s.issuedBits[k.Key] = true
		}
	}
	return keys
}

// container checks a Key container: JSON, exactly number keys, canonical
// lowercase UUIDs, standard padded base64 of size bits.
func (s *suite) container(t *testing.T, r response, number, size int) []etsi.KeyObject {
	t.Helper()
	if !strings.HasPrefix(r.ct, "application/json") {
		t.Errorf("Content-Type %q", r.ct)
	}
	var kc struct {
		Keys *[]etsi.KeyObject `json:"keys"`
	}
	if err := json.Unmarshal(r.body, &kc); err != nil || kc.Keys == nil {
		t.Fatalf("not a Key container: %v: %s", err, r.body)
	}
	keys := *kc.Keys
	if len(keys) != number {
		t.Fatalf("%d keys, want %d", len(keys), number)
	}
	for _, k := range keys {
		if !uuidRE.MatchString(k.KeyID) {
			t.Errorf("key_ID %q is not a canonical lowercase UUID", k.KeyID)
		}
		b, err := base64.StdEncoding.Strict().DecodeString(k.Key)
		if err != nil || base64.StdEncoding.EncodeToString(b) != k.Key {
			t.Errorf("key %s is not standard padded base64: %v", k.KeyID, err)
		}
		if size > 0 && len(b)*8 != size {
			t.Errorf("key %s has %d bits, want %d", k.KeyID, len(b)*8, size)
		}
	}
	return keys
}

// dec fetches ids at the slave site as slave and checks the bytes.
func (s *suite) dec(t *testing.T, site *Site, slave, master string, want []etsi.KeyObject) {
	t.Helper()
	refs := make([]map[string]any, len(want))
	for i, k := range want {
		refs[i] = map[string]any{"key_ID": k.KeyID}
	}
	body, _ := json.Marshal(map[string]any{"key_IDs": refs})
	r := s.mustDo(t, call{site: site, sae: slave, method: http.MethodPost, path: "/api/v1/keys/" + master + "/dec_keys", body: body})
	if r.code != http.StatusOK {
		t.Fatalf("dec_keys %s by %s: %d %s", master, slave, r.code, r.body)
	}
	got := s.container(t, r, len(want), 0)
	for i := range want {
		if got[i].KeyID != want[i].KeyID || got[i].Key != want[i].Key {
			t.Errorf("I2: dec_keys key %d = %s, want %s with the master's bytes", i, got[i].KeyID, want[i].KeyID)
		}
	}
}

// refused checks that a call is answered with code (and msg) and changes
// nothing.
func (s *suite) refused(t *testing.T, c call, codes []int, msg string) {
	t.Helper()
	before := s.levels(t)
	r := s.mustDo(t, c)
	if !slices.Contains(codes, r.code) {
		t.Errorf("%s %s?%s as %q: status %d, want %v: %s", c.method, c.path, c.query, c.sae, r.code, codes, r.body)
	} else {
		checkError(t, r, msg)
	}
	s.sameLevels(t, before)
}

func idsBody(ids ...string) []byte {
	refs := make([]map[string]any, len(ids))
	for i, id := range ids {
		refs[i] = map[string]any{"key_ID": id}
	}
	b, _ := json.Marshal(map[string]any{"key_IDs": refs})
	return b
}

func (s *suite) checkStatus(t *testing.T, master, slave string) {
	t.Helper()
	c := s.conns[master]
	site := &s.h.Master
	if c.SourceKME == s.h.Slave.KMEID {
		site = &s.h.Slave
	}
	r := s.mustDo(t, call{site: site, sae: master, method: http.MethodGet, path: "/api/v1/keys/" + slave + "/status"})
	if r.code != http.StatusOK {
		t.Fatalf("status: %d %s", r.code, r.body)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status is not a JSON object: %v", err)
	}
	for _, f := range statusFs {
		if _, ok := m[f]; !ok {
			t.Errorf("status has no %s", f)
		}
	}
	var st etsi.Status
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil { // wrong JSON types fail here
		t.Fatalf("status fields have wrong types: %v: %s", err, r.body)
	}
	if len(m["status_extension"]) == 0 || m["status_extension"][0] != '{' {
		t.Errorf("status_extension %s is not an object", m["status_extension"])
	}
	want := etsi.Status{SourceKMEID: c.SourceKME, TargetKMEID: c.TargetKME, MasterSAEID: c.MasterSAE, SlaveSAEID: c.SlaveSAE,
		KeySize: c.KeySize, StoredKeyCount: (s.filled[master] - s.used[master]) / c.KeySize, MaxKeyCount: c.MaxKeyCount,
		MaxKeyPerRequest: c.MaxKeyPerRequest, MaxKeySize: c.MaxKeySize, MinKeySize: c.MinKeySize, MaxSAEIDCount: c.MaxSAEIDCount}
	st.StatusExtension = nil
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("status\n got %+v\nwant %+v", st, want)
	}
}

func (s *suite) testStatus(t *testing.T) {
	s.checkStatus(t, s.m, s.s)
	s.checkStatus(t, s.ms, s.ss)
	s.checkStatus(t, s.rm, s.rs)
}

func upper(id string) string { return strings.ToUpper(id) }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (s *suite) testRules(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	// K is issued and stays unfetched while every rule runs against it.
	K := s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte(`{"number":2}`), 2, keySize1)
	k, k2 := K[0].KeyID, K[1].KeyID
	enc := "/api/v1/keys/" + s.s + "/enc_keys"
	dec := "/api/v1/keys/" + s.m + "/dec_keys"
	big := []byte(`{"number":1,"extension_optional":[{"pad":"` + strings.Repeat("a", 70<<10) + `"}]}`)
	bigIDs := []byte(`{"key_IDs":[{"key_ID":"` + k + `","pad":"` + strings.Repeat("a", 70<<10) + `"}]}`)
	B := http.StatusBadRequest
	U := http.StatusUnauthorized
	post := func(site *Site, sae, path, body string) call {
		return call{site: site, sae: sae, method: http.MethodPost, path: path, body: []byte(body)}
	}
	get := func(site *Site, sae, path, query string) call {
		return call{site: site, sae: sae, method: http.MethodGet, path: path, query: query}
	}
	rules := []struct {
		name  string
		c     call
		codes []int
		msg   string
	}{
		{"enc/body over 64 KiB", call{site: M, sae: s.m, method: http.MethodPost, path: enc, body: big}, []int{413, B}, ""},
		{"enc/malformed JSON", post(M, s.m, enc, `{"number":`), []int{B}, ""},
		{"enc/not JSON", post(M, s.m, enc, `number=1`), []int{B}, ""},
		{"enc/trailing data", post(M, s.m, enc, `{"number":1} x`), []int{B}, ""},
		{"enc/two JSON values", post(M, s.m, enc, `{"number":1}{"number":1}`), []int{B}, ""},
		{"enc/duplicate name", post(M, s.m, enc, `{"number":1,"number":1}`), []int{B}, ""},
		{"enc/duplicate nested name", post(M, s.m, enc, `{"extension_optional":[{"a":1,"a":2}]}`), []int{B}, ""},
		{"enc/invalid UTF-8", post(M, s.m, enc, "{\"extension_optional\":[{\"a\":\"\xff\"}]}"), []int{B}, ""},
		{"enc/top-level array", post(M, s.m, enc, `[]`), []int{B}, ""},
		{"enc/top-level null", post(M, s.m, enc, `null`), []int{B}, ""},
		{"enc/top-level string", post(M, s.m, enc, `"number"`), []int{B}, ""},
		{"enc/number as string", post(M, s.m, enc, `{"number":"1"}`), []int{B}, ""},
		{"enc/number fraction", post(M, s.m, enc, `{"number":1.5}`), []int{B}, ""},
		{"enc/number exponent", post(M, s.m, enc, `{"number":1e0}`), []int{B}, ""},
		{"enc/number overflow float", post(M, s.m, enc, `{"number":1e400}`), []int{B}, ""},
		{"enc/number overflow int", post(M, s.m, enc, `{"number":123456789012345678901234567890}`), []int{B}, ""},
		{"enc/size bool", post(M, s.m, enc, `{"size":true}`), []int{B}, ""},
		{"enc/size object", post(M, s.m, enc, `{"size":{}}`), []int{B}, ""},
		{"enc/additional not array", post(M, s.m, enc, `{"additional_slave_SAE_IDs":"`+s.s2+`"}`), []int{B}, ""},
		{"enc/additional element number", post(M, s.m, enc, `{"additional_slave_SAE_IDs":[1]}`), []int{B}, ""},
		{"enc/additional element null", post(M, s.m, enc, `{"additional_slave_SAE_IDs":[null]}`), []int{B}, ""},
		{"enc/extension_mandatory object", post(M, s.m, enc, `{"extension_mandatory":{"a":1}}`), []int{B}, ""},
		{"enc/extension_optional element string", post(M, s.m, enc, `{"extension_optional":["a"]}`), []int{B}, ""},
		{"enc/number zero", post(M, s.m, enc, `{"number":0}`), []int{B}, ""},
		{"enc/number negative", post(M, s.m, enc, `{"number":-1}`), []int{B}, ""},
		{"enc/number above max_key_per_request", post(M, s.m, enc, fmt.Sprintf(`{"number":%d}`, maxPerReq1+1)), []int{B}, ""},
		{"enc/size not multiple of 8", post(M, s.m, enc, `{"size":100}`), []int{B}, etsi.MsgSizeMultipleOf8},
		{"enc/size 7", post(M, s.m, enc, `{"size":7}`), []int{B}, etsi.MsgSizeMultipleOf8},
		{"enc/size zero", post(M, s.m, enc, `{"size":0}`), []int{B}, ""},
		{"enc/size below min_key_size", post(M, s.m, enc, fmt.Sprintf(`{"size":%d}`, minSize1-8)), []int{B}, ""},
		{"enc/size above max_key_size", post(M, s.m, enc, fmt.Sprintf(`{"size":%d}`, maxSize1+8)), []int{B}, ""},
		{"enc/additional above max_SAE_ID_count", post(M, s.m, enc, `{"additional_slave_SAE_IDs":["`+s.s2+`","`+s.s3+`","`+s.x+`"]}`), []int{B}, ""},
		{"enc/additional duplicated", post(M, s.m, enc, `{"additional_slave_SAE_IDs":["`+s.s2+`","`+s.s2+`"]}`), []int{B}, ""},
		{"enc/additional names the master", post(M, s.m, enc, `{"additional_slave_SAE_IDs":["`+s.m+`"]}`), []int{B}, ""},
		{"enc/additional names the slave", post(M, s.m, enc, `{"additional_slave_SAE_IDs":["`+s.s+`"]}`), []int{B}, ""},
		{"enc/additional empty ID", post(M, s.m, enc, `{"additional_slave_SAE_IDs":[""]}`), []int{B}, ""},
		{"enc/unknown extension_mandatory", post(M, s.m, enc, `{"extension_mandatory":[{"abc_route":true}]}`), []int{B}, etsi.MsgExtensionMandatory},
		{"enc/master is slave", post(M, s.m, "/api/v1/keys/"+s.m+"/enc_keys", `{}`), []int{B}, ""},
		{"enc/unknown slave in path", post(M, s.m, "/api/v1/keys/nobody-"+s.x+"/enc_keys", `{}`), []int{U}, ""},
		{"enc/caller is the slave", post(M, s.s, "/api/v1/keys/"+s.m+"/enc_keys", `{}`), []int{U}, ""},
		{"enc/caller has no connection", post(M, s.x, enc, `{}`), []int{U}, ""},
		{"enc/caller at the slave site", post(S, s.m, enc, `{}`), []int{U}, ""},
		{"enc/PUT", call{site: M, sae: s.m, method: http.MethodPut, path: enc, body: []byte(`{}`)}, []int{405}, ""},
		{"enc/DELETE", call{site: M, sae: s.m, method: http.MethodDelete, path: enc}, []int{405}, ""},
		{"enc/GET unknown parameter", get(M, s.m, enc, "number=1&colour=blue"), []int{B}, ""},
		{"enc/GET additional_slave_SAE_IDs", get(M, s.m, enc, "additional_slave_SAE_IDs="+s.s2), []int{B}, ""},
		{"enc/GET number not a number", get(M, s.m, enc, "number=abc"), []int{B}, ""},
		{"enc/GET number zero", get(M, s.m, enc, "number=0"), []int{B}, ""},
		{"enc/GET number twice", get(M, s.m, enc, "number=1&number=2"), []int{B}, ""},
		{"enc/GET size not multiple of 8", get(M, s.m, enc, "size=12"), []int{B}, etsi.MsgSizeMultipleOf8},
		{"enc/GET number above max", get(M, s.m, enc, fmt.Sprintf("number=%d", maxPerReq1+1)), []int{B}, ""},
		{"enc/POST with query", call{site: M, sae: s.m, method: http.MethodPost, path: enc, query: "number=1", body: []byte(`{}`)}, []int{B}, ""},
		{"enc/number above stored", post(M, s.ms, "/api/v1/keys/"+s.ss+"/enc_keys", `{"number":3}`), []int{503}, ""},
		{"enc/empty pool", post(M, s.em, "/api/v1/keys/"+s.es+"/enc_keys", `{}`), []int{503}, ""},
		{"status/POST", call{site: M, sae: s.m, method: http.MethodPost, path: "/api/v1/keys/" + s.s + "/status", body: []byte(`{}`)}, []int{405}, ""},
		{"status/unknown slave", get(M, s.m, "/api/v1/keys/nobody-"+s.x+"/status", ""), []int{U}, ""},
		{"status/caller has no connection", get(M, s.x, "/api/v1/keys/"+s.s+"/status", ""), []int{U}, ""},
		{"status/master is slave", get(M, s.m, "/api/v1/keys/"+s.m+"/status", ""), []int{B}, ""},
		{"unknown call", get(M, s.m, "/api/v1/keys/"+s.s+"/keys", ""), []int{404}, ""},
		{"unknown version", get(M, s.m, "/api/v2/keys/"+s.s+"/status", ""), []int{404}, ""},
		{"empty path SAE", get(M, s.m, "/api/v1/keys//status", ""), []int{404, U}, ""},
		{"dec/body over 64 KiB", call{site: S, sae: s.s, method: http.MethodPost, path: dec, body: bigIDs}, []int{413, B}, ""},
		{"dec/empty body", post(S, s.s, dec, ``), []int{B}, ""},
		{"dec/no key_IDs", post(S, s.s, dec, `{}`), []int{B}, ""},
		{"dec/empty key_IDs", post(S, s.s, dec, `{"key_IDs":[]}`), []int{B}, etsi.MsgKeysNotFound},
		{"dec/non-UUID", post(S, s.s, dec, `{"key_IDs":[{"key_ID":"abc"}]}`), []int{B}, etsi.MsgKeysNotFound},
		{"dec/empty ID", post(S, s.s, dec, `{"key_IDs":[{"key_ID":""}]}`), []int{B}, etsi.MsgKeysNotFound},
		{"dec/braced UUID", post(S, s.s, dec, `{"key_IDs":[{"key_ID":"{`+k+`}"}]}`), []int{B}, etsi.MsgKeysNotFound},
		{"dec/duplicated ID", post(S, s.s, dec, string(idsBody(k, k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/duplicated ID other case", post(S, s.s, dec, string(idsBody(k, upper(k)))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/known and unknown ID", post(S, s.s, dec, string(idsBody(k, newUUID()))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/unknown ID", post(S, s.s, dec, string(idsBody(newUUID()))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/key_IDs string", post(S, s.s, dec, `{"key_IDs":"`+k+`"}`), []int{B}, ""},
		{"dec/key_IDs of strings", post(S, s.s, dec, `{"key_IDs":["`+k+`"]}`), []int{B}, ""},
		{"dec/key_ID number", post(S, s.s, dec, `{"key_IDs":[{"key_ID":5}]}`), []int{B}, ""},
		{"dec/key object without key_ID", post(S, s.s, dec, `{"key_IDs":[{"key":"AAAA"}]}`), []int{B}, ""},
		{"dec/malformed JSON", post(S, s.s, dec, `{"key_IDs":[{"key_ID":"`+k+`"}]`), []int{B}, ""},
		{"dec/trailing data", post(S, s.s, dec, string(idsBody(k))+`]`), []int{B}, ""},
		{"dec/duplicate name", post(S, s.s, dec, `{"key_IDs":[{"key_ID":"`+k+`"}],"key_IDs":[{"key_ID":"`+k2+`"}]}`), []int{B}, ""},
		{"dec/duplicate name in key object", post(S, s.s, dec, `{"key_IDs":[{"key_ID":"`+k+`","key_ID":"`+k2+`"}]}`), []int{B}, ""},
		{"dec/caller not named", post(S, s.s2, dec, string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/caller not named, one of two", post(S, s.s2, dec, string(idsBody(k, k2))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/outsider", post(S, s.x, dec, string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/master calls dec_keys", post(S, s.m, "/api/v1/keys/"+s.s+"/dec_keys", string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/unknown master in path", post(S, s.s, "/api/v1/keys/nobody-"+s.x+"/dec_keys", string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/wrong master in path", post(S, s.s, "/api/v1/keys/"+s.ms+"/dec_keys", string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/master is slave", post(S, s.s, "/api/v1/keys/"+s.s+"/dec_keys", string(idsBody(k))), []int{B}, ""},
		{"dec/at the master site", post(M, s.s, dec, string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound},
		{"dec/GET without key_ID", get(S, s.s, dec, ""), []int{B}, ""},
		{"dec/GET two key_IDs", get(S, s.s, dec, "key_ID="+k+"&key_ID="+k2), []int{B}, ""},
		{"dec/GET non-UUID", get(S, s.s, dec, "key_ID=abc"), []int{B}, etsi.MsgKeysNotFound},
		{"dec/GET unknown parameter", get(S, s.s, dec, "key_ID="+k+"&colour=blue"), []int{B}, ""},
		{"dec/GET unknown ID", get(S, s.s, dec, "key_ID="+newUUID()), []int{B}, etsi.MsgKeysNotFound},
		{"dec/GET caller not named", get(S, s.s2, dec, "key_ID="+k), []int{B}, etsi.MsgKeysNotFound},
		{"dec/POST with query", call{site: S, sae: s.s, method: http.MethodPost, path: dec, query: "key_ID=" + k, body: idsBody(k)}, []int{B}, ""},
		{"dec/PUT", call{site: S, sae: s.s, method: http.MethodPut, path: dec, body: idsBody(k)}, []int{405}, ""},
		{"dec/PATCH", call{site: S, sae: s.s, method: http.MethodPatch, path: dec, body: idsBody(k)}, []int{405}, ""},
	}
	if s.h.NoIdentityCert != nil {
		rules = append(rules,
			struct {
				name  string
				c     call
				codes []int
				msg   string
			}{"enc/certificate without SAE ID", call{site: M, sae: noID, method: http.MethodPost, path: enc, body: []byte(`{}`)}, []int{U}, ""},
			struct {
				name  string
				c     call
				codes []int
				msg   string
			}{"dec/certificate without SAE ID", call{site: S, sae: noID, method: http.MethodPost, path: dec, body: idsBody(k)}, []int{U}, ""})
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) { s.refused(t, r.c, r.codes, r.msg) })
	}
	t.Run("no client certificate", func(t *testing.T) {
		for _, c := range []call{
			{site: M, method: http.MethodGet, path: "/api/v1/keys/" + s.s + "/status"},
			{site: M, method: http.MethodPost, path: enc, body: []byte(`{}`)},
			{site: S, method: http.MethodPost, path: dec, body: idsBody(k)},
		} {
			before := s.levels(t)
			r, err := s.do(t, c)
			switch {
			case err != nil:
				t.Logf("%s %s without a certificate: refused at the TLS layer: %v", c.method, c.path, err)
			case r.code != U:
				t.Errorf("%s %s without a certificate: %d, want 401: %s", c.method, c.path, r.code, r.body)
			default:
				checkError(t, r, "")
			}
			s.sameLevels(t, before)
		}
	})
	// After every refusal both keys are still fetchable by the right slave,
	// exactly once.
	s.dec(t, S, s.s, s.m, K)
	s.refused(t, post(S, s.s, dec, string(idsBody(k))), []int{B}, etsi.MsgKeysNotFound)
	s.refused(t, get(S, s.s, dec, "key_ID="+k2), []int{B}, etsi.MsgKeysNotFound)
}

func (s *suite) testHappy(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	var all []etsi.KeyObject
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte{}, 1, keySize1)...)
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodPost, "", nil, 1, keySize1)...)
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte(" {} \n"), 1, keySize1)...)
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodGet, "", nil, 1, keySize1)...)
	// Content-Type on a GET is harmless.
	r := s.mustDo(t, call{site: M, sae: s.m, method: http.MethodGet, path: "/api/v1/keys/" + s.s + "/enc_keys", query: "number=2&size=128", ctype: "application/json"})
	if r.code != http.StatusOK {
		t.Fatalf("GET enc_keys with Content-Type: %d %s", r.code, r.body)
	}
	ks := s.container(t, r, 2, 128)
	s.mu.Lock()
	s.used[s.m] += 2 * 128
	s.mu.Unlock()
	all = append(all, ks...)
	lenient := `{"number":4,"size":1024,"unknown":{"x":[1,2]},"extension_optional":[{"vendor_x":1}],` +
		`"extension_mandatory":[],"additional_slave_SAE_IDs":null}`
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte(lenient), 4, 1024)...)
	nearLimit := []byte(`{"number":1,"padding":"` + strings.Repeat("p", 60<<10) + `"}`)
	all = append(all, s.enc(t, M, s.m, s.s, http.MethodPost, "", nearLimit, 1, keySize1)...)
	s.checkStatus(t, s.m, s.s)

	// dec_keys: the first by GET with an upper-case ID, the rest by POST
	// with whole key objects (extra members) sent back.
	g := s.mustDo(t, call{site: S, sae: s.s, method: http.MethodGet, path: "/api/v1/keys/" + s.m + "/dec_keys", query: "key_ID=" + upper(all[0].KeyID), ctype: "application/json"})
	if g.code != http.StatusOK {
		t.Fatalf("GET dec_keys: %d %s", g.code, g.body)
	}
	if got := s.container(t, g, 1, keySize1); got[0].KeyID != all[0].KeyID || got[0].Key != all[0].Key {
		t.Errorf("I2: GET dec_keys %+v, want %+v", got[0], all[0])
	}
	rest := all[1:]
	body, _ := json.Marshal(map[string]any{"key_IDs": rest, "key_IDs_extension": map[string]any{"x": 1}, "other": true})
	p := s.mustDo(t, call{site: S, sae: s.s, method: http.MethodPost, path: "/api/v1/keys/" + s.m + "/dec_keys", body: body})
	if p.code != http.StatusOK {
		t.Fatalf("POST dec_keys: %d %s", p.code, p.body)
	}
	got := s.container(t, p, len(rest), 0)
	for i := range rest {
		if got[i].KeyID != rest[i].KeyID || got[i].Key != rest[i].Key {
			t.Errorf("I2: key %d: got %s, want %s with the master's bytes", i, got[i].KeyID, rest[i].KeyID)
		}
	}
	// second fetch refused, by POST and by GET, and changes nothing
	s.refused(t, call{site: S, sae: s.s, method: http.MethodPost, path: "/api/v1/keys/" + s.m + "/dec_keys", body: idsBody(rest[0].KeyID)}, []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.refused(t, call{site: S, sae: s.s, method: http.MethodGet, path: "/api/v1/keys/" + s.m + "/dec_keys", query: "key_ID=" + all[0].KeyID}, []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
}

func (s *suite) testMulticast(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	keys := s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte(`{"number":2,"additional_slave_SAE_IDs":["`+s.s2+`","`+s.s3+`"]}`), 2, keySize1)
	a, b := keys[0], keys[1]
	dec := "/api/v1/keys/" + s.m + "/dec_keys"
	pdec := func(sae string, ids ...string) call {
		return call{site: S, sae: sae, method: http.MethodPost, path: dec, body: idsBody(ids...)}
	}
	s.refused(t, pdec(s.x, a.KeyID), []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.dec(t, S, s.s, s.m, keys)
	s.refused(t, pdec(s.s, a.KeyID), []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.dec(t, S, s.s2, s.m, []etsi.KeyObject{a})
	s.refused(t, pdec(s.s2, a.KeyID, b.KeyID), []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.dec(t, S, s.s3, s.m, []etsi.KeyObject{b, a})
	s.refused(t, pdec(s.x, b.KeyID), []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.dec(t, S, s.s2, s.m, []etsi.KeyObject{b})
	// every named slave fetched both: erased for everyone
	for _, sae := range []string{s.s, s.s2, s.s3} {
		for _, k := range keys {
			s.refused(t, pdec(sae, k.KeyID), []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
		}
	}
}

// testOracle: an SAE that may not fetch a key gets the same answer — status
// and body — whether the key ID is pending, already fetched or unknown, so
// it cannot probe whether a key ID it learned is still pending. The answer
// is the one the owner gets for a fetched key (400, the spec message).
func (s *suite) testOracle(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	keys := s.enc(t, M, s.m, s.s, http.MethodPost, "", []byte(`{"number":2}`), 2, keySize1)
	pending, fetched := keys[0], keys[1]
	s.dec(t, S, s.s, s.m, []etsi.KeyObject{fetched})
	unknown := newUUID()
	dec := "/api/v1/keys/" + s.m + "/dec_keys"
	for _, caller := range []string{s.s2, s.x, s.ss} {
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			answers := map[string]response{}
			for name, id := range map[string]string{"pending": pending.KeyID, "fetched": fetched.KeyID, "unknown": unknown} {
				c := call{site: S, sae: caller, method: method, path: dec, body: idsBody(id)}
				if method == http.MethodGet {
					c.body, c.query = nil, "key_ID="+id
				}
				before := s.levels(t)
				r := s.mustDo(t, c)
				s.sameLevels(t, before)
				if r.code != http.StatusBadRequest {
					t.Errorf("%s dec_keys of a %s key by %s: %d, want 400: %s", method, name, caller, r.code, r.body)
				}
				checkError(t, r, etsi.MsgKeysNotFound)
				answers[name] = r
			}
			for _, name := range []string{"fetched", "unknown"} {
				if a, p := answers[name], answers["pending"]; a.code != p.code || !bytes.Equal(a.body, p.body) {
					t.Errorf("%s dec_keys by %s tells a pending key (%d %s) from a %s one (%d %s)",
						method, caller, p.code, p.body, name, a.code, a.body)
				}
			}
		}
	}
	// the owner's answers are unchanged: the pending key is its, once.
	s.dec(t, S, s.s, s.m, []etsi.KeyObject{pending})
	s.refused(t, call{site: S, sae: s.s, method: http.MethodPost, path: dec, body: idsBody(pending.KeyID)}, []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
}

func (s *suite) testInsufficient(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	path := "/api/v1/keys/" + s.ss + "/enc_keys"
	s.checkStatus(t, s.ms, s.ss)
	s.refused(t, call{site: M, sae: s.ms, method: http.MethodPost, path: path, body: []byte(`{"number":3}`)}, []int{503}, "")
	keys := s.enc(t, M, s.ms, s.ss, http.MethodPost, "", []byte(`{"number":2}`), 2, keySize1)
	s.checkStatus(t, s.ms, s.ss)
	s.refused(t, call{site: M, sae: s.ms, method: http.MethodPost, path: path, body: []byte(`{}`)}, []int{503}, "")
	s.refused(t, call{site: M, sae: s.ms, method: http.MethodGet, path: path}, []int{503}, "")
	s.dec(t, S, s.ss, s.ms, keys)
}

func (s *suite) testReverse(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	path := "/api/v1/keys/" + s.rs + "/enc_keys"
	s.refused(t, call{site: M, sae: s.rm, method: http.MethodPost, path: path, body: []byte(`{}`)}, []int{http.StatusUnauthorized}, "")
	keys := s.enc(t, S, s.rm, s.rs, http.MethodPost, "", []byte(`{"number":3}`), 3, 128)
	s.refused(t, call{site: S, sae: s.rs, method: http.MethodPost, path: "/api/v1/keys/" + s.rm + "/dec_keys", body: idsBody(keys[0].KeyID)}, []int{http.StatusBadRequest}, etsi.MsgKeysNotFound)
	s.dec(t, M, s.rs, s.rm, keys)
	s.checkStatus(t, s.rm, s.rs)
}

// testConcurrent: 16 masters' requests at once on one connection, then
// their slaves' fetches at once: every key issued once, every key fetched
// with the master's bytes.
func (s *suite) testConcurrent(t *testing.T) {
	M, S := &s.h.Master, &s.h.Slave
	const workers, rounds, per = 16, 2, 2
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []etsi.KeyObject
	errs := make(chan error, workers*rounds)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				r, err := s.do(t, call{site: M, sae: s.m, method: http.MethodPost, path: "/api/v1/keys/" + s.s + "/enc_keys",
					body: []byte(fmt.Sprintf(`{"number":%d}`, per))})
				if err != nil || r.code != http.StatusOK {
					errs <- fmt.Errorf("enc_keys: %v %d %s", err, r.code, r.body)
					return
				}
				var kc etsi.KeyContainer
				if err := json.Unmarshal(r.body, &kc); err != nil || len(kc.Keys) != per {
					errs <- fmt.Errorf("enc_keys answer %s: %v", r.body, err)
					return
				}
				mu.Lock()
				all = append(all, kc.Keys...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.used[s.m] += len(all) * keySize1
	for _, k := range all {
		if s.issuedIDs[k.KeyID] || s.issuedBits[k.Key] {
			t.Errorf("I1: key %s (or its bits) issued twice", k.KeyID)
		}
		s.issuedIDs[k.KeyID], s.issuedBits[k.Key] = true, true
	}
	s.mu.Unlock()
	errs = make(chan error, len(all))
	for i := 0; i < len(all); i += per {
		wg.Add(1)
		go func(want []etsi.KeyObject) {
			defer wg.Done()
			ids := make([]string, len(want))
			for j, k := range want {
				ids[j] = k.KeyID
			}
			r, err := s.do(t, call{site: S, sae: s.s, method: http.MethodPost, path: "/api/v1/keys/" + s.m + "/dec_keys", body: idsBody(ids...)})
			if err != nil || r.code != http.StatusOK {
				errs <- fmt.Errorf("dec_keys: %v %d %s", err, r.code, r.body)
				return
			}
			var kc etsi.KeyContainer
			if err := json.Unmarshal(r.body, &kc); err != nil || len(kc.Keys) != len(want) {
				errs <- fmt.Errorf("dec_keys answer %s: %v", r.body, err)
				return
			}
			for j := range want {
				if kc.Keys[j].KeyID != want[j].KeyID || kc.Keys[j].Key != want[j].Key {
					errs <- fmt.Errorf("I2: key %s differs at the slave site", want[j].KeyID)
				}
			}
		}(all[i:min(i+per, len(all))])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
