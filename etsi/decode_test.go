package etsi

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"regexp"
	"slices"
	"testing"
)

func TestDecodeKeyRequest(t *testing.T) {
	cases := []struct {
		body string
		want KeyRequest
		msg  string // "" = accepted
	}{
		{"", KeyRequest{}, ""},
		{" \n", KeyRequest{}, ""},
		{"{}", KeyRequest{}, ""},
		{`{"number":3,"size":512,"extra":[1]}`, KeyRequest{Number: 3, Size: 512}, ""},
		{`{"number":null,"size":null,"additional_slave_SAE_IDs":null,"extension_mandatory":null}`, KeyRequest{}, ""},
		{`{"additional_slave_SAE_IDs":["a","b"]}`, KeyRequest{AdditionalSlaveSAEIDs: []string{"a", "b"}}, ""},
		{`{"additional_slave_SAE_IDs":[]}`, KeyRequest{}, ""},
		{`{"extension_mandatory":[{}],"extension_optional":[{"x":1}]}`, KeyRequest{}, ""},
		{`{"Number":3}`, KeyRequest{}, ""}, // names are exact: "Number" is an unknown member
		{`{"number":1,"number":1}`, KeyRequest{}, "duplicate JSON member name"},
		{`{"a":{"b":1,"b":2}}`, KeyRequest{}, "duplicate JSON member name"},
		{`{"number":1} {}`, KeyRequest{}, "malformed JSON"},
		{`{"number":1`, KeyRequest{}, "malformed JSON"},
		{"{\"x\":\"\xff\"}", KeyRequest{}, "malformed JSON"},
		{`{"number":"2"}`, KeyRequest{}, "wrong type"},
		{`{"number":2.0}`, KeyRequest{}, "wrong type"},
		{`{"number":2e0}`, KeyRequest{}, "wrong type"},
		{`{"number":1e999}`, KeyRequest{}, "number out of range"},
		{`{"number":99999999999999999999}`, KeyRequest{}, "number out of range"},
		{`{"number":0}`, KeyRequest{}, "number shall be a positive integer"},
		{`{"number":-0}`, KeyRequest{}, "number shall be a positive integer"},
		{`{"size":-8}`, KeyRequest{}, "size shall be a positive integer"},
		{`{"size":[]}`, KeyRequest{}, "wrong type"},
		{`{"additional_slave_SAE_IDs":["a","a"]}`, KeyRequest{}, "duplicate SAE ID in additional_slave_SAE_IDs"},
		{`{"additional_slave_SAE_IDs":["a b"]}`, KeyRequest{}, "invalid SAE ID in additional_slave_SAE_IDs"},
		{`{"additional_slave_SAE_IDs":[true]}`, KeyRequest{}, "wrong type"},
		{`{"extension_mandatory":[{"route":1}]}`, KeyRequest{}, MsgExtensionMandatory},
		{`{"extension_mandatory":[1]}`, KeyRequest{}, "wrong type"},
		{`{"extension_optional":{}}`, KeyRequest{}, "wrong type"},
		{`[]`, KeyRequest{}, "wrong type"},
		{`null`, KeyRequest{}, "wrong type"},
		{`5`, KeyRequest{}, "wrong type"},
	}
	for _, c := range cases {
		got, err := DecodeKeyRequest([]byte(c.body))
		var re *RequestError
		switch {
		case c.msg == "" && err != nil:
			t.Errorf("%s: %v", c.body, err)
		case c.msg == "" && !reflect.DeepEqual(got, c.want):
			t.Errorf("%s: %+v, want %+v", c.body, got, c.want)
		case c.msg != "" && (!errors.As(err, &re) || re.Message != c.msg):
			t.Errorf("%s: error %v, want %q", c.body, err, c.msg)
		}
	}
}

func TestConnectionLimits(t *testing.T) {
	c := ConnectionInfo{MasterSAE: "m", SlaveSAE: "s", KeySize: 256, MaxKeyPerRequest: 4, MaxSAEIDCount: 1, MinKeySize: 64, MaxKeySize: 1024}
	cases := []struct {
		req  KeyRequest
		want EncRequest
		msg  string
	}{
		{KeyRequest{}, EncRequest{MasterSAE: "m", SlaveSAE: "s", Number: 1, Size: 256}, ""},
		{KeyRequest{Number: 4, Size: 64, AdditionalSlaveSAEIDs: []string{"t"}}, EncRequest{MasterSAE: "m", SlaveSAE: "s", Number: 4, Size: 64, Additional: []string{"t"}}, ""},
		{KeyRequest{Number: 5}, EncRequest{}, "number exceeds max_key_per_request"},
		{KeyRequest{Size: 100}, EncRequest{}, MsgSizeMultipleOf8},
		{KeyRequest{Size: 56}, EncRequest{}, "size shall be between min_key_size and max_key_size"},
		{KeyRequest{Size: 1032}, EncRequest{}, "size shall be between min_key_size and max_key_size"},
		{KeyRequest{AdditionalSlaveSAEIDs: []string{"t", "u"}}, EncRequest{}, "additional_slave_SAE_IDs exceeds max_SAE_ID_count"},
		{KeyRequest{AdditionalSlaveSAEIDs: []string{"m"}}, EncRequest{}, "additional_slave_SAE_IDs shall not name the master SAE"},
		{KeyRequest{AdditionalSlaveSAEIDs: []string{"s"}}, EncRequest{}, "additional_slave_SAE_IDs shall not name the slave SAE"},
	}
	for i, tc := range cases {
		got, err := ConnectionLimits(tc.req, c)
		var re *RequestError
		switch {
		case tc.msg == "" && (err != nil || !reflect.DeepEqual(got, tc.want)):
			t.Errorf("%d: %+v %v, want %+v", i, got, err, tc.want)
		case tc.msg != "" && (!errors.As(err, &re) || re.Message != tc.msg):
			t.Errorf("%d: %v, want %q", i, err, tc.msg)
		}
	}
}

func TestCanonicalKeyID(t *testing.T) {
	for in, want := range map[string]string{
		"9cf3af44-5f17-4d9b-afd6-b8e8cb055db1":          "9cf3af44-5f17-4d9b-afd6-b8e8cb055db1",
		"9CF3AF44-5F17-4D9B-AFD6-B8E8CB055DB1":          "9cf3af44-5f17-4d9b-afd6-b8e8cb055db1",
		"{9cf3af44-5f17-4d9b-afd6-b8e8cb055db1}":        "",
		"urn:uuid:9cf3af44-5f17-4d9b-afd6-b8e8cb055db1": "",
		"9cf3af445f174d9bafd6b8e8cb055db1":              "",
		"9cf3af44-5f17-4d9b-afd6-b8e8cb055dbg":          "",
		"9cf3af44+5f17-4d9b-afd6-b8e8cb055db1":          "",
		"":                                              "",
	} {
		got, ok := CanonicalKeyID(in)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", in, got, ok, want)
		}
	}
}

var canonicalRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// FuzzDecodeKeyRequest: decoding never panics, accepts only valid JSON
// objects without duplicate names, yields values within the documented
// domain, and is stable under re-encoding.
func FuzzDecodeKeyRequest(f *testing.F) {
	for _, s := range []string{"", "{}", `{"number":2,"size":512,"additional_slave_SAE_IDs":["a"]}`, `{"number":1,"number":2}`,
		`{"extension_optional":[{"a":{"b":[1,{"c":null}]}}]}`, `{"extension_mandatory":[{"x":1}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeKeyRequest(body)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) || re.Message == "" {
				t.Fatalf("error %v is not a RequestError with a message", err)
			}
			return
		}
		if len(bytes.TrimSpace(body)) > 0 {
			if !json.Valid(body) {
				t.Fatalf("accepted invalid JSON %q", body)
			}
			var m map[string]any
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber() // unknown members may hold numbers no float holds
			if err := dec.Decode(&m); err != nil || m == nil {
				t.Fatalf("accepted a non-object %q", body)
			}
		}
		if req.Number < 0 || req.Size < 0 {
			t.Fatalf("negative values %+v", req)
		}
		seen := map[string]bool{}
		for _, id := range req.AdditionalSlaveSAEIDs {
			if !ValidSAEID(id) || seen[id] {
				t.Fatalf("bad additional ID %q", id)
			}
			seen[id] = true
		}
		if len(req.ExtensionMandatory) > 0 || len(req.ExtensionOptional) > 0 {
			t.Fatalf("extensions leaked into the request: %+v", req)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, err := DecodeKeyRequest(again)
		if err != nil || !reflect.DeepEqual(req, req2) {
			t.Fatalf("re-encoding %s: %+v %v, want %+v", again, req2, err, req)
		}
	})
}

// FuzzDecodeKeyIDs: decoding never panics; accepted lists are non-empty,
// canonical, duplicate-free, and stable under re-encoding.
func FuzzDecodeKeyIDs(f *testing.F) {
	for _, s := range []string{`{"key_IDs":[{"key_ID":"9cf3af44-5f17-4d9b-afd6-b8e8cb055db1"}]}`, `{"key_IDs":[]}`,
		`{"key_IDs":[{"key_ID":"9CF3AF44-5F17-4D9B-AFD6-B8E8CB055DB1","key":"AA=="}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ids, err := DecodeKeyIDs(body)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) || re.Message == "" {
				t.Fatalf("error %v is not a RequestError with a message", err)
			}
			return
		}
		if !json.Valid(body) || len(ids) == 0 {
			t.Fatalf("accepted %q → %v", body, ids)
		}
		for i, id := range ids {
			if !canonicalRE.MatchString(id) || slices.Contains(ids[:i], id) {
				t.Fatalf("bad ID list %v", ids)
			}
		}
		refs := make([]KeyIDRef, len(ids))
		for i, id := range ids {
			refs[i] = KeyIDRef{KeyID: id}
		}
		again, _ := json.Marshal(KeyIDs{KeyIDs: refs})
		ids2, err := DecodeKeyIDs(again)
		if err != nil || !slices.Equal(ids, ids2) {
			t.Fatalf("re-encoding: %v %v", ids2, err)
		}
	})
}
