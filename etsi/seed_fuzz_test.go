package etsi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"qkdkms/etsi"
	"qkdkms/etsi/internal/memkme"
)

// Fuzz targets of the seed API (issue 13 item 10): an anonymous client on
// the network reaches these decoders on the plain-HTTP seed listener.

const seedBody = `{
  "source_KME_ID": "sender_app",
  "target_KME_ID": "receiver_app",
  "master_SAE_ID": "ghi",
  "slave_SAE_ID": "jkl",
  "key_size": 8,
  "max_keys_count": 10,
  "max_key_per_request": 1,
  "max_SAE_ID_count": 0
}`

// seedJSON is c as a register_connection body (ETSI field names).
func seedJSON(c etsi.ConnectionInfo) []byte {
	b, _ := json.Marshal(map[string]any{
		"source_KME_ID": c.SourceKME, "target_KME_ID": c.TargetKME, "master_SAE_ID": c.MasterSAE,
		"slave_SAE_ID": c.SlaveSAE, "key_size": c.KeySize, "max_key_count": c.MaxKeyCount,
		"max_key_per_request": c.MaxKeyPerRequest, "max_SAE_ID_count": c.MaxSAEIDCount,
		"min_key_size": c.MinKeySize, "max_key_size": c.MaxKeySize, "priority": c.Priority,
	})
	return b
}

// FuzzDecodeSeedConnection: a register_connection body decodes or errors
// with a RequestError, never panics; what decodes is a connection this KME
// takes part in with sizes inside the documented bounds, and its
// re-encoding decodes to the same connection.
func FuzzDecodeSeedConnection(f *testing.F) {
	f.Add([]byte(seedBody))
	f.Add([]byte(`{"source_KME_ID":"receiver_app","target_KME_ID":"sender_app","master_SAE_ID":"a","slave_SAE_ID":"b","key_size":256,"max_key_count":5,"min_key_size":64,"max_key_size":1024,"priority":7}`))
	f.Add([]byte(`{"source_KME_ID":"sender_app","target_KME_ID":"receiver_app","master_SAE_ID":"a","slave_SAE_ID":"b","key_size":8,"max_keys_count":1,"max_key_count":1}`))
	f.Add([]byte(`{"key_size":1e999}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := etsi.DecodeSeedConnection(body, "sender_app")
		if err != nil {
			var re *etsi.RequestError
			if !errors.As(err, &re) || re.Message == "" {
				t.Fatalf("error %v is not a RequestError with a message", err)
			}
			return
		}
		if c.SourceKME != "sender_app" && c.TargetKME != "sender_app" || c.SourceKME == c.TargetKME ||
			c.MasterSAE == c.SlaveSAE || !etsi.ValidSAEID(c.MasterSAE) || !etsi.ValidSAEID(c.SlaveSAE) {
			t.Fatalf("accepted connection %+v", c)
		}
		if c.KeySize < 8 || c.KeySize%8 != 0 || c.MinKeySize > c.KeySize || c.KeySize > c.MaxKeySize ||
			c.MaxKeyCount < 1 || c.MaxKeyPerRequest < 1 || c.MaxKeyPerRequest > c.MaxKeyCount || c.MaxSAEIDCount < 0 || c.Priority < 0 {
			t.Fatalf("accepted sizes %+v", c)
		}
		c2, err := etsi.DecodeSeedConnection(seedJSON(c), "sender_app")
		if err != nil || !reflect.DeepEqual(c, c2) {
			t.Fatalf("decode(encode(x)) = %+v, %v; want %+v", c2, err, c)
		}
	})
}

// FuzzSeedHandler: any request to the seed listener (method, path and
// query, body) against a site holding one registered connection with key
// material. The handler never panics, every answer is a JSON object with
// a status the seed API documents, and no call but a successful
// register_connection creates a connection.
func FuzzSeedHandler(f *testing.F) {
	f.Add("POST", "/register_connection", []byte(seedBody))
	f.Add("POST", "/register_connection", []byte(strings.Replace(seedBody, `"jkl"`, `"mno"`, 1)))
	f.Add("GET", "/get_key?slave_host=jkl", []byte{})
	f.Add("POST", "/get_key?key_id=9cf3af44-5f17-4d9b-afd6-b8e8cb055db1", []byte{})
	f.Add("GET", "/get_key?key_id=9CF3AF44-5F17-4D9B-AFD6-B8E8CB055DB1&key_id=x", []byte{})
	f.Add("GET", "/ping", []byte{})
	f.Add("DELETE", "/register_connection", []byte("{}"))
	f.Add("GET", "/%2e%2e/get_key", []byte{})
	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		req, err := http.NewRequest(method, "http://seed.test"+target, bytes.NewReader(body))
		if err != nil || req.URL.Path == "" || req.URL.Path[0] != '/' {
			return
		}
		w := memkme.NewWorld("sender_app", "receiver_app")
		site := w.Site("sender_app")
		ctx := context.Background()
		c, err := etsi.DecodeSeedConnection([]byte(seedBody), "sender_app")
		if err != nil {
			t.Fatal(err)
		}
		if err := site.RegisterConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := w.Fill("ghi", "jkl", make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		etsi.NewSeedHandler(site, nil).ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 401, 404, 405, 413, 415, 503:
		default:
			t.Fatalf("%s %s: status %d", method, target, rec.Code)
		}
		var answer map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("%s %s: %d answer is no JSON object: %q", method, target, rec.Code, rec.Body.Bytes())
		}
		conns, _ := site.ConnectionsOf(ctx, "ghi")
		others, _ := site.ConnectionsOf(ctx, "jkl")
		registered := rec.Code == 200 && req.URL.Path == "/register_connection"
		if !registered && (len(conns) != 1 || len(others) != 1) {
			t.Fatalf("%s %s answered %d and changed the connections: %v %v", method, target, rec.Code, conns, others)
		}
	})
}
