package kme

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// FuzzInternalDecode: every request body of the internal forward and peer
// API (issue 13 item 10), decoded as serveForward and servePeer decode it.
// Any body decodes or errors with etsi.ErrBadRequest, never panics; what
// decodes is encoded as the sending node encodes it (forward.Post) and
// decodes to the same value (decode(encode(x)) == x, compared encoded).
func FuzzInternalDecode(f *testing.F) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	conn := raftstore.Connection{SourceKME: "sender_app", TargetKME: "receiver_app", MasterSAE: "ghi", SlaveSAE: "jkl", KeySize: 256, MaxKeyCount: 10, MaxKeyPerRequest: 1}
	for _, v := range []any{
		connArgs{Master: "ghi", Slave: "jkl"},
		connArgs{From: "receiver_app", Master: "ghi", Slave: "jkl"},
		saeArgs{SAE: "ghi"},
		encArgs{EncRequest: etsi.EncRequest{MasterSAE: "ghi", SlaveSAE: "jkl", Additional: []string{"mno"}, Number: 2, Size: 256}, RequestID: "r1"},
		decArgs{DecRequest: etsi.DecRequest{SlaveSAE: "jkl", MasterSAE: "ghi", KeyIDs: []string{"9cf3af44-5f17-4d9b-afd6-b8e8cb055db1"}}, RequestID: "d1"},
		etsi.ConnectionInfo{SourceKME: "sender_app", TargetKME: "receiver_app", MasterSAE: "ghi", SlaveSAE: "jkl", KeySize: 8, MaxKeyCount: 10, MaxKeyPerRequest: 1},
		versionArgs{Node: "n1", Version: raftstore.MaxVersion},
		blockArgs{Master: "ghi", Slave: "jkl", BlockID: "b1", Bits: []byte{1, 2, 3, 4}},
		assignmentsArgs{From: "sender_app", Assignments: []raftstore.Assignment{{RequestID: "r1", MasterSAE: "ghi", SlaveSAE: "jkl",
			Slaves: []string{"jkl"}, Keys: []raftstore.KeyRange{{KeyID: "9cf3af44-5f17-4d9b-afd6-b8e8cb055db1", Offset: 0, Bits: 256}}, IssuedAt: at}}},
		burnArgs{From: "sender_app", KeyIDs: []string{"9cf3af44-5f17-4d9b-afd6-b8e8cb055db1"}},
		peerRegisterArgs{From: "sender_app", Connection: conn},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"assignments":[{"issued_at":"not a time"}]}`))
	f.Add([]byte(`{"master_SAE_ID":"ghi"} {}`))
	f.Add([]byte(`{"bits":"!!"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, newV := range []func() any{
			func() any { return new(connArgs) }, func() any { return new(saeArgs) },
			func() any { return new(encArgs) }, func() any { return new(decArgs) },
			func() any { return new(etsi.ConnectionInfo) }, func() any { return new(versionArgs) },
			func() any { return new(blockArgs) }, func() any { return new(assignmentsArgs) },
			func() any { return new(burnArgs) }, func() any { return new(peerRegisterArgs) },
		} {
			v := newV()
			r := httptest.NewRequest(http.MethodPost, "/internal/v1/forward/op", bytes.NewReader(body))
			if err := decode(r, v); err != nil {
				if !errors.Is(err, etsi.ErrBadRequest) {
					t.Fatalf("%T: error %v is not bad request", v, err)
				}
				continue
			}
			enc, err := json.Marshal(v)
			if err != nil {
				// Only a time outside what JSON holds (year past 9999) fails:
				// the sender could never have encoded it.
				continue
			}
			v2 := newV()
			r = httptest.NewRequest(http.MethodPost, "/internal/v1/forward/op", bytes.NewReader(enc))
			// Compared encoded: a decoded time's zone is a fresh *Location.
			if err := decode(r, v2); err != nil {
				t.Fatalf("%T: %s does not decode: %v", v, enc, err)
			}
			if again, _ := json.Marshal(v2); !bytes.Equal(again, enc) {
				t.Fatalf("%T: decode(encode(x)) = %s, want %s", v, again, enc)
			}
		}
	})
}
