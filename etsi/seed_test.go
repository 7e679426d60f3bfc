package etsi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"qkdkms/etsi"
)

// The seed README's curl lines, verbatim except for host:port, which the
// test substitutes with its listeners (8000 = sender_app, 8001 =
// receiver_app).
const (
	seedRegister = `curl --location 'http://localhost:8000/register_connection' \
--header 'Content-Type: application/json' \
--data '{
  "source_KME_ID": "sender_app",
  "target_KME_ID": "receiver_app",
  "master_SAE_ID": "ghi",
  "slave_SAE_ID": "jkl",
  "key_size": 8,
  "max_keys_count": 10,
  "max_key_per_request": 1,
  "max_SAE_ID_count": 0

}'`
	seedMaster = `curl --location 'http://127.0.0.1:8000/get_key?slave_host=jkl' \
--data ''`
	seedSlave = `curl --location 'http://127.0.0.1:8001/get_key?key_id=9cf3af44-5f17-4d9b-afd6-b8e8cb055db1' \
--data ''`
)

func (ts *twoSites) curl(t *testing.T, line string) []byte {
	t.Helper()
	line = strings.NewReplacer("http://localhost:8000", ts.seedA.URL, "http://127.0.0.1:8000", ts.seedA.URL,
		"http://127.0.0.1:8001", ts.seedB.URL).Replace(line)
	out, err := exec.Command("sh", "-c", line+" --silent --show-error").Output()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	t.Logf("%s\n→ %s", line, out)
	return out
}

// TestSeedCurlVerbatim runs the seed README's three curl lines.
func TestSeedCurlVerbatim(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	ts := newTwoSites(t)
	var reg etsi.SeedRegistered
	if err := json.Unmarshal(ts.curl(t, seedRegister), &reg); err != nil || reg.Connection.MasterSAEID != "ghi" || reg.Connection.KeySize != 8 {
		t.Fatalf("register: %+v %v", reg, err)
	}
	if err := ts.world.Fill("ghi", "jkl", []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	var mk, sk etsi.SeedKey
	if err := json.Unmarshal(ts.curl(t, seedMaster), &mk); err != nil || mk.KeyID == "" {
		t.Fatalf("master get_key: %+v %v", mk, err)
	}
	if b, err := base64.StdEncoding.DecodeString(mk.KeyData); err != nil || !bytes.Equal(b, []byte{1}) {
		t.Fatalf("key_data %q: %v", mk.KeyData, err)
	}
	slave := strings.Replace(seedSlave, "9cf3af44-5f17-4d9b-afd6-b8e8cb055db1", mk.KeyID, 1)
	if err := json.Unmarshal(ts.curl(t, slave), &sk); err != nil || sk != mk {
		t.Fatalf("slave get_key: %+v, want %+v (%v)", sk, mk, err)
	}
	var e etsi.Error
	if err := json.Unmarshal(ts.curl(t, slave), &e); err != nil || e.Message != etsi.MsgKeysNotFound {
		t.Fatalf("second slave get_key: %+v %v", e, err)
	}
	// the verbatim key_id of the README is not on the KME: a JSON error
	if err := json.Unmarshal(ts.curl(t, seedSlave), &e); err != nil || e.Message != etsi.MsgKeysNotFound {
		t.Fatalf("README key_id: %+v %v", e, err)
	}
}

func seedDo(t *testing.T, method, url, ctype, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	return resp.StatusCode, b
}

func TestSeedAPI(t *testing.T) {
	ts := newTwoSites(t)
	A, B := ts.seedA.URL, ts.seedB.URL
	reg := `{"source_KME_ID":"sender_app","target_KME_ID":"receiver_app","master_SAE_ID":"ghi","slave_SAE_ID":"jkl","key_size":64,"max_key_count":10,"max_key_per_request":2}`
	if code, b := seedDo(t, "POST", A+"/register_connection", "application/json", reg); code != 200 {
		t.Fatalf("register: %d %s", code, b)
	}
	// identical again: fine; registered at the target site too
	if code, b := seedDo(t, "POST", B+"/register_connection", "", reg); code != 200 {
		t.Fatalf("register again at the target: %d %s", code, b)
	}
	ci, err := ts.world.Site("receiver_app").Connection(context.Background(), "ghi", "jkl")
	if err != nil || ci.MinKeySize != 64 || ci.MaxKeySize != 64 || ci.MaxSAEIDCount != 0 || ci.MaxKeyCount != 10 {
		t.Fatalf("defaults: %+v %v", ci, err)
	}
	if err := ts.world.Fill("ghi", "jkl", bytes.Repeat([]byte{9, 8, 7, 6, 5, 4, 3, 2}, 3)); err != nil {
		t.Fatal(err)
	}
	levels := func() map[string]int { return ts.world.Levels() }
	cases := []struct {
		name, method, url, ctype, body string
		code                           int
		msg                            string
	}{
		{"register duplicate name", "POST", A + "/register_connection", "", strings.Replace(reg, `"key_size":64`, `"key_size":64,"key_size":8`, 1), 400, ""},
		{"register trailing data", "POST", A + "/register_connection", "", reg + "x", 400, ""},
		{"register key_size 7", "POST", A + "/register_connection", "", strings.Replace(reg, `"key_size":64`, `"key_size":7`, 1), 400, ""},
		{"register key_size 12", "POST", A + "/register_connection", "", strings.Replace(reg, `"key_size":64`, `"key_size":12`, 1), 400, etsi.MsgSizeMultipleOf8},
		{"register key_size string", "POST", A + "/register_connection", "", strings.Replace(reg, `"key_size":64`, `"key_size":"64"`, 1), 400, ""},
		{"register no key_size", "POST", A + "/register_connection", "", strings.Replace(reg, `"key_size":64,`, ``, 1), 400, ""},
		{"register both count names", "POST", A + "/register_connection", "", strings.Replace(reg, `"max_key_count":10`, `"max_key_count":10,"max_keys_count":10`, 1), 400, ""},
		{"register master is slave", "POST", A + "/register_connection", "", strings.Replace(reg, `"jkl"`, `"ghi"`, 1), 400, ""},
		{"register foreign KMEs", "POST", A + "/register_connection", "", strings.NewReplacer(`"sender_app"`, `"x1"`, `"receiver_app"`, `"x2"`).Replace(reg), 400, ""},
		{"register conflict", "POST", A + "/register_connection", "", strings.Replace(reg, `"max_key_count":10`, `"max_key_count":11`, 1), 400, ""},
		{"register empty body", "POST", A + "/register_connection", "", "", 400, ""},
		{"register GET", "GET", A + "/register_connection", "", "", 405, ""},
		{"get_key both parameters", "GET", A + "/get_key?slave_host=jkl&key_id=9cf3af44-5f17-4d9b-afd6-b8e8cb055db1", "", "", 400, ""},
		{"get_key no parameter", "POST", A + "/get_key", "", "", 400, ""},
		{"get_key unknown parameter", "GET", A + "/get_key?slave_host=jkl&x=1", "", "", 400, ""},
		{"get_key body", "POST", A + "/get_key?slave_host=jkl", "application/json", `{"number":5}`, 400, ""},
		{"get_key unknown slave", "GET", A + "/get_key?slave_host=nobody", "", "", 404, ""},
		{"get_key slave at its own site", "GET", B + "/get_key?slave_host=jkl", "", "", 404, ""},
		{"get_key non-UUID", "GET", B + "/get_key?key_id=abc", "", "", 400, etsi.MsgKeysNotFound},
		{"get_key unknown key", "GET", B + "/get_key?key_id=9cf3af44-5f17-4d9b-afd6-b8e8cb055db1", "", "", 400, etsi.MsgKeysNotFound},
		{"get_key DELETE", "DELETE", A + "/get_key?slave_host=jkl", "", "", 405, ""},
		{"unknown path", "GET", A + "/api/v1/keys/jkl/status", "", "", 404, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := levels()
			code, b := seedDo(t, c.method, c.url, c.ctype, c.body)
			var e etsi.Error
			if code != c.code || json.Unmarshal(b, &e) != nil || e.Message == "" || (c.msg != "" && e.Message != c.msg) {
				t.Fatalf("%d %s, want %d %q", code, b, c.code, c.msg)
			}
			if after := levels(); !equalLevels(before, after) {
				t.Fatalf("state changed: %v → %v", before, after)
			}
		})
	}
	// GET and POST both work; keys match across sites; 3 keys of 64 bits in the pool
	for i, method := range []string{"GET", "POST", "GET"} {
		code, b := seedDo(t, method, A+"/get_key?slave_host=jkl", "application/x-www-form-urlencoded", "")
		var k etsi.SeedKey
		if code != 200 || json.Unmarshal(b, &k) != nil {
			t.Fatalf("master get_key %d: %d %s", i, code, b)
		}
		code, b = seedDo(t, "POST", B+"/get_key?key_id="+strings.ToUpper(k.KeyID), "", "")
		var s etsi.SeedKey
		if code != 200 || json.Unmarshal(b, &s) != nil || s != k {
			t.Fatalf("slave get_key %d: %d %s, want %+v", i, code, b, k)
		}
	}
	if code, b := seedDo(t, "GET", A+"/get_key?slave_host=jkl", "", ""); code != 503 {
		t.Fatalf("empty pool: %d %s", code, b)
	}
	if code, b := seedDo(t, "GET", A+"/ping", "", ""); code != 200 || !bytes.Contains(b, []byte("sender_app")) {
		t.Fatalf("ping: %d %s", code, b)
	}
	recs := ts.seedAudit.records()
	if len(recs) < len(cases) {
		t.Fatalf("%d seed audit records", len(recs))
	}
}

func equalLevels(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
