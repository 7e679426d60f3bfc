package forward

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Fuzz targets of what another node (or a peer site) sends back and what
// it puts in the headers (issue 13 item 10).

// FuzzDecodeError: any answer body with any status an HTTP client can
// report decodes to an *Error with a code and that status, never panics;
// a body that is no error body becomes internal or unavailable with a
// bounded message; and an error passed on with WriteError decodes again to
// the same code and message (decode(encode(x)) == x).
func FuzzDecodeError(f *testing.F) {
	for _, r := range Table {
		b, _ := json.Marshal(Error{Code: r.Code, Message: "raftstore: " + r.Code})
		f.Add(r.Status, b)
	}
	f.Add(502, []byte("<html>bad gateway</html>"))
	f.Add(404, []byte("404 page not found\n"))
	f.Add(400, []byte(`{"code":"","message":"x"}`))
	f.Add(503, []byte(`{"code":"from_a_newer_node","message":"later"}`))
	f.Add(200, []byte(`{"code":1}`))
	f.Add(500, []byte(strings.Repeat("é", 300)))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return // net/http never reports such a status
		}
		e := DecodeError(status, body)
		if e == nil || e.Code == "" || e.Status != status {
			t.Fatalf("DecodeError(%d, %q) = %+v", status, body, e)
		}
		var probe Error
		if json.Unmarshal(body, &probe) != nil || probe.Code == "" {
			if e.Code != CodeInternal && e.Code != CodeUnavailable {
				t.Fatalf("non-error body decoded as code %q", e.Code)
			}
			if len(e.Message) > 220 {
				t.Fatalf("message of %d bytes from a non-error body", len(e.Message))
			}
		}
		rec := httptest.NewRecorder()
		WriteError(rec, e)
		if rec.Code != status {
			t.Fatalf("passed on with status %d, received %d", rec.Code, status)
		}
		again := DecodeError(rec.Code, rec.Body.Bytes())
		if again.Code != e.Code || again.Message != e.Message {
			t.Fatalf("decode(encode(%+v)) = %+v", e, again)
		}
	})
}

// FuzzDeadline: whatever the deadline headers say, Deadline never returns
// a deadline past now + limit, and a positive relative deadline is never
// in the past.
func FuzzDeadline(f *testing.F) {
	f.Add("1500", "", int64(15000))
	f.Add("", "1767323045000000000", int64(15000))
	f.Add("9223372036854775807", "", int64(0))
	f.Add("-5", "-5", int64(1))
	f.Add("0x10", "1e9", int64(0))
	f.Fuzz(func(t *testing.T, ms, legacy string, limitMs int64) {
		if limitMs < 0 || limitMs > 1<<30 {
			return
		}
		limit := time.Duration(limitMs) * time.Millisecond
		r := httptest.NewRequest(http.MethodPost, "/internal/v1/forward/enc_keys", nil)
		r.Header.Set(DeadlineHeader, ms)
		r.Header.Set(LegacyDeadlineHeader, legacy)
		before := time.Now()
		d, ok := Deadline(r, limit)
		after := time.Now()
		if limit > 0 && (!ok || d.After(after.Add(limit))) {
			t.Fatalf("headers %q %q, limit %v: deadline %v past the limit", ms, legacy, limit, d.Sub(before))
		}
		if ok && r.Header.Get(LegacyDeadlineHeader) == "" && d.Before(before) {
			t.Fatalf("relative deadline %q is %v in the past", ms, before.Sub(d))
		}
		ctx, cancel := Context(r, limit)
		cancel()
		_ = ctx
	})
}
