package forward

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// TestTable pins every row: each sentinel (the row's own and its aliases)
// encodes to the code, the code decodes back to the row's sentinel and
// carries its HTTP status, and the error reaches the ETSI handler as the
// status etsi.BackendStatus gives its etsi sentinel.
func TestTable(t *testing.T) {
	tests := []struct {
		err        error
		code       string
		status     int
		decoded    error
		etsiStatus int
		retry      bool
	}{
		{raftstore.ErrNotLeader, CodeNotLeader, 421, raftstore.ErrNotLeader, 503, true},
		{raftstore.ErrNoLeader, CodeNoLeader, 503, raftstore.ErrNoLeader, 503, true},
		{ErrConnectionLimit, CodeConnLimit, 403, ErrConnectionLimit, 400, false},
		{raftstore.ErrOutcomeUnknown, CodeOutcomeUnknown, 503, raftstore.ErrOutcomeUnknown, 503, false},
		{ErrNoAnswer, CodeOutcomeUnknown, 503, raftstore.ErrOutcomeUnknown, 503, false},
		{fmt.Errorf("%w: %w", raftstore.ErrOutcomeUnknown, context.DeadlineExceeded), CodeOutcomeUnknown, 503, raftstore.ErrOutcomeUnknown, 503, false},
		{raftstore.ErrNotEnabled, CodeNotEnabled, 503, raftstore.ErrNotEnabled, 503, false},
		{raftstore.ErrUpgradeRequired, CodeUpgrade, 503, raftstore.ErrUpgradeRequired, 503, false},
		{raftstore.ErrNotReconciled, CodeNotReconciled, 503, raftstore.ErrNotReconciled, 503, false},
		{etsi.ErrUnknownSAE, CodeUnknownSAE, 401, etsi.ErrUnknownSAE, 401, false},
		{raftstore.ErrConnectionNotFound, CodeUnknownSAE, 401, etsi.ErrUnknownSAE, 401, false},
		{etsi.ErrUnauthorized, CodeUnauthorized, 401, etsi.ErrUnauthorized, 401, false},
		{raftstore.ErrNotAuthorized, CodeUnauthorized, 401, etsi.ErrUnauthorized, 401, false},
		{ErrForbidden, CodeForbidden, 403, ErrForbidden, 503, false},
		{etsi.ErrKeysNotFound, CodeKeysNotFound, 400, etsi.ErrKeysNotFound, 400, false},
		{raftstore.ErrKeyNotFound, CodeKeysNotFound, 400, etsi.ErrKeysNotFound, 400, false},
		{etsi.ErrInsufficientKeys, CodeInsufficient, 503, etsi.ErrInsufficientKeys, 503, false},
		{raftstore.ErrInsufficientKeys, CodeInsufficient, 503, etsi.ErrInsufficientKeys, 503, false},
		{etsi.ErrConflict, CodeConflict, 400, etsi.ErrConflict, 400, false},
		{raftstore.ErrConnectionExists, CodeConflict, 400, etsi.ErrConflict, 400, false},
		{raftstore.ErrBlockExists, CodeConflict, 400, etsi.ErrConflict, 400, false},
		{etsi.ErrBadRequest, CodeBadRequest, 400, etsi.ErrBadRequest, 400, false},
		{raftstore.ErrInvalid, CodeBadRequest, 400, etsi.ErrBadRequest, 400, false},
		{etsi.ErrUnavailable, CodeUnavailable, 503, etsi.ErrUnavailable, 503, false},
		{raftstore.ErrClosed, CodeUnavailable, 503, etsi.ErrUnavailable, 503, false},
		{context.DeadlineExceeded, CodeUnavailable, 503, etsi.ErrUnavailable, 503, false},
		{context.Canceled, CodeUnavailable, 503, etsi.ErrUnavailable, 503, false},
		{ErrInternal, CodeInternal, 500, ErrInternal, 503, false},
		{errors.New("no row names this"), CodeInternal, 500, ErrInternal, 503, false},
	}
	covered := map[error]bool{}
	for _, tc := range tests {
		covered[tc.err] = true
		t.Run(tc.err.Error(), func(t *testing.T) {
			wrapped := fmt.Errorf("some context: %w", tc.err)
			if got := CodeOf(wrapped); got != tc.code {
				t.Fatalf("CodeOf = %q, want %q", got, tc.code)
			}
			if got := ErrorOf(tc.code); got != tc.decoded {
				t.Errorf("ErrorOf(%q) = %v, want %v", tc.code, got, tc.decoded)
			}
			if got := StatusOf(tc.code); got != tc.status {
				t.Errorf("StatusOf(%q) = %d, want %d", tc.code, got, tc.status)
			}
			if got := Retryable(wrapped); got != tc.retry {
				t.Errorf("Retryable = %v, want %v", got, tc.retry)
			}
			if got, _ := etsi.BackendStatus(ToETSI(wrapped)); got != tc.etsiStatus {
				t.Errorf("ETSI status = %d, want %d", got, tc.etsiStatus)
			}

			// Across a hop: written by one node, read by the next.
			rec := httptest.NewRecorder()
			WriteError(rec, wrapped)
			if rec.Code != tc.status {
				t.Errorf("WriteError status = %d, want %d", rec.Code, tc.status)
			}
			got := DecodeError(rec.Code, rec.Body.Bytes())
			if got.Code != tc.code || got.Message != wrapped.Error() {
				t.Errorf("decoded %+v, want code %q message %q", got, tc.code, wrapped.Error())
			}
			if !errors.Is(got, tc.decoded) {
				t.Errorf("decoded error is not %v", tc.decoded)
			}
			if CodeOf(got) != tc.code || Retryable(got) != tc.retry {
				t.Errorf("decoded error: code %q retry %v, want %q %v", CodeOf(got), Retryable(got), tc.code, tc.retry)
			}
			// And on: passed on as it is, the answer is the same.
			rec2 := httptest.NewRecorder()
			WriteError(rec2, got)
			if rec2.Code != rec.Code || rec2.Body.String() != rec.Body.String() {
				t.Errorf("passed on: %d %s, want %d %s", rec2.Code, rec2.Body, rec.Code, rec.Body)
			}
		})
	}
	for _, r := range Table {
		if !covered[r.Err] {
			t.Errorf("row %s: sentinel %v not tested", r.Code, r.Err)
		}
		for _, a := range r.Also {
			if !covered[a] {
				t.Errorf("row %s: sentinel %v not tested", r.Code, a)
			}
		}
	}
}

// TestTableWellFormed: codes unique, every row complete.
func TestTableWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Table {
		if r.Code == "" || r.Err == nil || r.ETSI == nil || r.Status < 400 {
			t.Errorf("incomplete row %+v", r)
		}
		if seen[r.Code] {
			t.Errorf("code %s twice", r.Code)
		}
		seen[r.Code] = true
	}
}

// TestUnknownCode: a code from a newer node is passed on with its own code
// and status, and read here as unavailable.
func TestUnknownCode(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteCode(rec, http.StatusTeapot, "from_the_future", "a newer node's refusal")
	e := DecodeError(rec.Code, rec.Body.Bytes())
	if !errors.Is(e, etsi.ErrUnavailable) || Retryable(e) {
		t.Errorf("unknown code reads as %v (retry %v), want unavailable, no retry", e.Unwrap(), Retryable(e))
	}
	out := httptest.NewRecorder()
	WriteError(out, e)
	if out.Code != http.StatusTeapot || CodeOf(e) != "from_the_future" {
		t.Errorf("passed on as %d %q, want 418 from_the_future", out.Code, CodeOf(e))
	}
}

// TestDecodeNonJSON: an answer without an error body (a proxy's page).
func TestDecodeNonJSON(t *testing.T) {
	tests := []struct {
		status int
		code   string
	}{
		{http.StatusBadGateway, CodeUnavailable},
		{http.StatusServiceUnavailable, CodeUnavailable},
		{http.StatusNotFound, CodeInternal},
		{http.StatusInternalServerError, CodeInternal},
	}
	for _, tc := range tests {
		e := DecodeError(tc.status, []byte("<html>gateway</html>"))
		if e.Code != tc.code || e.Status != tc.status {
			t.Errorf("%d: %+v, want code %s", tc.status, e, tc.code)
		}
	}
}
