package etsi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"qkdkms/etsi/pki"
)

// leakyBackend fails its calls with errors whose text names other tenants
// and internals; see TestErrorBodiesCarryFixedReasons.
type leakyBackend struct {
	err           error // returned by the call under test
	failConnLooks bool  // Connection and ConnectionsOf fail too
}

func (b *leakyBackend) KMEID() string { return "sender_app" }

func (b *leakyBackend) conn(master, slave string) ConnectionInfo {
	return ConnectionInfo{SourceKME: "sender_app", TargetKME: "receiver_app", MasterSAE: master, SlaveSAE: slave,
		KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 4, MaxSAEIDCount: 2, MinKeySize: 64, MaxKeySize: 1024, StoredKeyCount: 10}
}

func (b *leakyBackend) Connection(_ context.Context, master, slave string) (ConnectionInfo, error) {
	if b.failConnLooks {
		return ConnectionInfo{}, b.err
	}
	return b.conn(master, slave), nil
}

func (b *leakyBackend) EncKeys(context.Context, EncRequest) ([]Key, error) { return nil, b.err }
func (b *leakyBackend) DecKeys(context.Context, DecRequest) ([]Key, error) { return nil, b.err }
func (b *leakyBackend) RegisterConnection(context.Context, ConnectionInfo) error {
	return b.err
}

func (b *leakyBackend) ConnectionsOf(_ context.Context, sae string) ([]ConnectionInfo, error) {
	if b.failConnLooks {
		return nil, b.err
	}
	return []ConnectionInfo{b.conn("ghi", sae)}, nil
}

// TestErrorBodiesCarryFixedReasons: whatever a backend's error says (here
// SAE IDs of other tenants and a peer address), the ETSI and seed answers
// are JSON Error objects with fixed reasons: the same body for two
// different backend texts, neither text in it.
func TestErrorBodiesCarryFixedReasons(t *testing.T) {
	ca, err := pki.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueSAE("ghi")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(leaf.CertPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	state := &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}
	secrets := []string{"additional slave eve-tenant-1 is not connected to mallory-tenant-1 at 10.0.0.9:8443",
		"raft: bolt: mallory-tenant-2 page 4711 at 192.0.2.7"}
	sentinels := []error{ErrBadRequest, ErrConflict, ErrInsufficientKeys, ErrUnknownSAE, ErrUnauthorized,
		ErrKeysNotFound, ErrUnavailable, context.DeadlineExceeded, errors.New("bolt: internal")}
	const keyID = "5f0c2a8e-0d0b-4c51-9a0e-8f3b3b8f5f11"
	register := `{"source_KME_ID":"sender_app","target_KME_ID":"receiver_app","master_SAE_ID":"ghi","slave_SAE_ID":"jkl","key_size":8}`
	calls := []struct {
		name, method, target, body string
		seed, connLooks            bool
	}{
		{"status", http.MethodGet, "/api/v1/keys/jkl/status", "", false, true},
		{"enc_keys connection", http.MethodPost, "/api/v1/keys/jkl/enc_keys", `{"number":1}`, false, true},
		{"enc_keys", http.MethodPost, "/api/v1/keys/jkl/enc_keys", `{"number":1,"additional_slave_SAE_IDs":["eve"]}`, false, false},
		{"dec_keys", http.MethodPost, "/api/v1/keys/jkl/dec_keys", `{"key_IDs":[{"key_ID":"` + keyID + `"}]}`, false, false},
		{"seed register_connection", http.MethodPost, "/register_connection", register, true, false},
		{"seed get_key slave_host", http.MethodPost, "/get_key?slave_host=jkl", "", true, false},
		{"seed get_key slave_host lookup", http.MethodGet, "/get_key?slave_host=jkl", "", true, true},
		{"seed get_key key_id", http.MethodPost, "/get_key?key_id=" + keyID, "", true, false},
	}
	for _, c := range calls {
		for _, sentinel := range sentinels {
			t.Run(c.name+"/"+sentinel.Error(), func(t *testing.T) {
				var bodies [][]byte
				for _, secret := range secrets {
					b := &leakyBackend{err: fmt.Errorf("%w: %s", sentinel, secret), failConnLooks: c.connLooks}
					var h http.Handler
					if c.seed {
						h = NewSeedHandler(b, nil)
					} else {
						h = NewHandler(b, Options{})
					}
					req := httptest.NewRequest(c.method, c.target, strings.NewReader(c.body))
					if !c.seed {
						req.TLS = state
					}
					rr := httptest.NewRecorder()
					h.ServeHTTP(rr, req)
					if rr.Code < 400 {
						t.Fatalf("status %d: %s", rr.Code, rr.Body)
					}
					if ct := rr.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
						t.Errorf("Content-Type %q", ct)
					}
					var e struct {
						Message *string          `json:"message"`
						Details []map[string]any `json:"details"`
					}
					if err := json.Unmarshal(rr.Body.Bytes(), &e); err != nil || e.Message == nil || *e.Message == "" {
						t.Fatalf("not an ETSI Error object: %v: %s", err, rr.Body)
					}
					for _, word := range []string{"tenant", "10.0.0.9", "192.0.2.7", "bolt", "raft"} {
						if strings.Contains(rr.Body.String(), word) {
							t.Errorf("answer quotes the backend (%q): %s", word, rr.Body)
						}
					}
					bodies = append(bodies, rr.Body.Bytes())
				}
				if !bytes.Equal(bodies[0], bodies[1]) {
					t.Errorf("answer depends on the backend's words:\n%s\n%s", bodies[0], bodies[1])
				}
			})
		}
	}
}
