package etsi014

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"unicode"
)

// ErrDevice is matched (errors.Is) by every failure of the device: each is
// a *DeviceError whose Kind is one of ErrTimeout, ErrDisconnected,
// ErrUnreachable, ErrRefused or ErrMalformed, which errors.Is matches too.
var ErrDevice = errors.New("etsi014: device error")

// The kinds of device failure.
var (
	// ErrTimeout: the device did not answer within the call's timeout
	// (or the caller's deadline).
	ErrTimeout = errors.New("device timed out")
	// ErrDisconnected: the connection broke mid-call (reset, closed
	// before or during the answer).
	ErrDisconnected = errors.New("device disconnected mid-call")
	// ErrUnreachable: no connection to the device (refused, no route,
	// name not found, TLS handshake failed).
	ErrUnreachable = errors.New("device unreachable")
	// ErrRefused: the device answered a non-2xx status (Message holds
	// its ETSI error message).
	ErrRefused = errors.New("device refused the call")
	// ErrMalformed: the device's answer is not what ETSI 014 and the
	// request call for (malformed JSON, wrong key count, size or IDs).
	ErrMalformed = errors.New("device answered malformed keys")
)

var (
	// ErrClosed: the driver was closed.
	ErrClosed = errors.New("etsi014: driver closed")
	// ErrInvalidArgument: Draw or Fetch was called with arguments no
	// device call can serve (n ≤ 0, no IDs, an ID that is not a UUID).
	ErrInvalidArgument = errors.New("etsi014: invalid argument")
)

// DeviceError is a failed device call. Its text never carries key bits:
// for a malformed answer it says what was wrong, not what was there.
type DeviceError struct {
	Op      string // "enc_keys" or "dec_keys"
	URL     string // the device's base URL
	Kind    error  // ErrTimeout, ErrDisconnected, ErrUnreachable, ErrRefused, ErrMalformed
	Status  int    // the HTTP status, for ErrRefused
	Message string // the device's ETSI error message (ErrRefused) or what was malformed
	Err     error  // the transport's error, when there is one
}

func (e *DeviceError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "etsi014: %s at %s: %v", e.Op, e.URL, e.Kind)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Is matches ErrDevice and the error's Kind.
func (e *DeviceError) Is(target error) bool { return target == ErrDevice || target == e.Kind }

// Unwrap is the transport's error.
func (e *DeviceError) Unwrap() error { return e.Err }

// errCallTimeout is the cause of a call's own deadline.
var errCallTimeout = errors.New("per-call timeout")

// transportError classifies an error of the HTTP exchange. ctx is the
// caller's context, cctx the call's (with the per-call timeout).
func (c *Client) transportError(ctx, cctx context.Context, op string, err error) error {
	de := &DeviceError{Op: op, URL: c.base}
	switch cause := context.Cause(cctx); {
	case errors.Is(ctx.Err(), context.Canceled):
		// The caller gave up: says nothing about the device.
		return fmt.Errorf("etsi014: %s at %s: %w", op, c.base, context.Cause(ctx))
	case errors.Is(cause, ErrClosed):
		return fmt.Errorf("etsi014: %s: %w", op, ErrClosed)
	case errors.Is(cause, errCallTimeout):
		de.Kind, de.Err = ErrTimeout, fmt.Errorf("no answer within %v", c.timeout)
		return de
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		de.Kind, de.Err = ErrTimeout, context.DeadlineExceeded
		return de
	}
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		de.Kind = ErrDisconnected
	case errors.As(err, &ne) && ne.Timeout():
		de.Kind = ErrTimeout
	case errors.As(err, &oe) && oe.Op == "read":
		de.Kind = ErrDisconnected
	default:
		de.Kind = ErrUnreachable
	}
	de.Err = err
	return de
}

// deviceMessage is a device's error message made safe to log: printable,
// at most 200 characters.
func deviceMessage(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}
