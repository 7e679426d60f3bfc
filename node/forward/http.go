package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"qkdkms/raftstore"
)

// Headers between nodes.
const (
	// DeadlineHeader carries the caller's remaining time in milliseconds.
	// It is relative, so the two nodes' clocks need not agree; each hop
	// sends what is left of its own deadline, so the time shrinks along a
	// chain (the receiver counts from arrival: transit is not charged).
	DeadlineHeader = "X-Qkdkms-Deadline-Ms"
	// LegacyDeadlineHeader is the absolute deadline (Unix nanoseconds)
	// that admin forwarding sent before this package. A node still honours
	// it from an older peer during a rolling upgrade (this release only);
	// it never sends it.
	LegacyDeadlineHeader = "X-Qkdkms-Deadline"
	// ForwardedHeader marks a request a node relayed to its leader (the
	// node's ID): the receiver runs it or answers not-leader, never
	// forwards it again.
	ForwardedHeader = "X-Qkdkms-Forwarded-By"
)

// maxAnswer bounds an answer body read from another node.
const maxAnswer = 64 << 20

// Deadline is the deadline a request carries: now plus DeadlineHeader,
// else LegacyDeadlineHeader, never later than now + limit (limit > 0) nor
// than r's own context. ok is false when there is none.
func Deadline(r *http.Request, limit time.Duration) (d time.Time, ok bool) {
	now := time.Now()
	if ms, err := strconv.ParseInt(r.Header.Get(DeadlineHeader), 10, 64); err == nil && ms > 0 {
		d, ok = now.Add(Millis(ms)), true
	} else if ns, err := strconv.ParseInt(r.Header.Get(LegacyDeadlineHeader), 10, 64); err == nil && ns > 0 {
		d, ok = time.Unix(0, ns), true
	}
	if limit > 0 {
		if l := now.Add(limit); !ok || l.Before(d) {
			d, ok = l, true
		}
	}
	if t, has := r.Context().Deadline(); has && (!ok || t.Before(d)) {
		d, ok = t, true
	}
	return d, ok
}

// Millis is ms milliseconds (ms > 0), saturating instead of overflowing
// into a negative duration: a header of 2^63-1 ms is no deadline in the
// past (FuzzDeadline).
func Millis(ms int64) time.Duration {
	if ms > math.MaxInt64/int64(time.Millisecond) {
		return math.MaxInt64
	}
	return time.Duration(ms) * time.Millisecond
}

// Context is r's context with the deadline the caller sent (see Deadline).
func Context(r *http.Request, limit time.Duration) (context.Context, context.CancelFunc) {
	if d, ok := Deadline(r, limit); ok {
		return context.WithDeadline(r.Context(), d)
	}
	return context.WithCancel(r.Context())
}

// SetDeadline puts ctx's remaining time (at least 1 ms) in DeadlineHeader.
func SetDeadline(ctx context.Context, h http.Header) {
	if d, ok := ctx.Deadline(); ok {
		h.Set(DeadlineHeader, strconv.FormatInt(max(time.Until(d).Milliseconds(), 1), 10))
	}
}

// TransportError: a request got no HTTP answer. Sent is false when it
// provably never left this node (the dial failed): the other node did
// nothing, as with no-leader. Otherwise the outcome is unknown
// (ErrNoAnswer).
type TransportError struct {
	Err  error
	Sent bool
}

func (e *TransportError) Error() string { return e.Err.Error() }

// Unwrap is the cause and what it means: no leader reached, or an unknown
// outcome.
func (e *TransportError) Unwrap() []error {
	if e.Sent {
		return []error{ErrNoAnswer, e.Err}
	}
	return []error{raftstore.ErrNoLeader, e.Err}
}

// Send makes one request to another node, with ctx's remaining time in
// DeadlineHeader, and returns the body of a 200 answer and the headers of
// any answer. Any other answer is an *Error (its code and message from the
// body, or the status alone when the body has none); no answer is a
// *TransportError.
func Send(ctx context.Context, c *http.Client, method, url string, body []byte, h http.Header) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	SetDeadline(ctx, req.Header)
	resp, err := c.Do(req)
	if err != nil {
		var oe *net.OpError
		return nil, nil, &TransportError{Err: err, Sent: !(errors.As(err, &oe) && oe.Op == "dial")}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, resp.Header, &TransportError{Err: err, Sent: true}
	}
	if resp.StatusCode == http.StatusOK {
		return data, resp.Header, nil
	}
	return nil, resp.Header, DecodeError(resp.StatusCode, data)
}

// DecodeError is the *Error of a non-200 answer: its JSON body, or, when
// the body is no error body (a proxy's page, an older node's plain-text
// 404), the status and the body's text under code unavailable (502, 503,
// 504) or internal.
func DecodeError(status int, body []byte) *Error {
	var e Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code == "" {
		// Valid UTF-8, cut on a rune boundary: the message is passed on
		// in JSON, which would change any other bytes (FuzzDecodeError).
		msg := strings.ToValidUTF8(string(bytes.TrimSpace(body)), "\uFFFD")
		if len(msg) > 200 {
			cut := 200
			for cut > 0 && !utf8.RuneStart(msg[cut]) {
				cut--
			}
			msg = msg[:cut] + "…"
		}
		code := CodeInternal
		if status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout {
			code = CodeUnavailable
		}
		return &Error{Code: code, Status: status, Message: fmt.Sprintf("HTTP %d: %s", status, msg)}
	}
	e.Status = status
	return &e
}

// Post sends in as JSON (see Send) and decodes a 200 answer into out.
// onHeader, if set, sees the headers of any answer.
func Post(ctx context.Context, c *http.Client, url string, in, out any, onHeader func(http.Header)) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%w: encode request: %w", ErrInternal, err)
	}
	data, hdr, err := Send(ctx, c, http.MethodPost, url, body, nil)
	if onHeader != nil && hdr != nil {
		onHeader(hdr)
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: decode answer from %s: %w", ErrInternal, url, err)
	}
	return nil
}
