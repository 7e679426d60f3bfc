package etsi014

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"qkdkms/etsi"
	"qkdkms/quantum"
)

// maxDrawBytes bounds one Draw (a link block is far smaller).
const maxDrawBytes = 16 << 20

// Client is the "etsi014" driver: this site as the SAE of its local QKD
// device. It is safe for concurrent use.
type Client struct {
	o        Options
	base     string
	timeout  time.Duration
	keyBytes int
	hc       *http.Client
	log      *slog.Logger

	life     context.Context // ends at Close
	closeNow context.CancelCauseFunc

	mu          sync.Mutex
	closed      bool
	reachKnown  bool
	reachable   bool
	lastErr     string
	lastErrAt   time.Time
	lastOK      time.Time
	keysDrawn   uint64
	keysFetched uint64
	calls       uint64
	failed      uint64
}

var _ quantum.KeyDevice = (*Client)(nil)

// NewDriver is the registered factory: it decodes and validates the
// options (reading the certificate files, no network call) and returns a
// *Client logging to slog.Default().
func NewDriver(options json.RawMessage) (quantum.Driver, error) {
	o, err := ParseOptions(options)
	if err != nil {
		return nil, err
	}
	return New(o, nil)
}

// New returns a client for the device o names. Zero options take their
// defaults. log receives one line per failed call (and a debug line per
// call): operation, key count and IDs, never key bits; nil means
// slog.Default().
func New(o Options, log *slog.Logger) (*Client, error) {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tlsConf, err := o.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	base, err := baseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: url: %w", ErrOptions, err)
	}
	if log == nil {
		log = slog.Default()
	}
	timeout := o.Timeout.D()
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: timeout,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	life, closeNow := context.WithCancelCause(context.Background())
	return &Client{
		o: o, base: base, timeout: timeout, keyBytes: o.KeySize / 8,
		hc: &http.Client{Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		log:  log.With("driver", "etsi014", "url", base),
		life: life, closeNow: closeNow,
	}, nil
}

// KeyBytes is the size of one device key in bytes (key_size/8): Draw
// takes whole keys.
func (c *Client) KeyBytes() int { return c.keyBytes }

// Options are the client's options, defaults filled in.
func (c *Client) Options() Options { return c.o }

// Draw takes exactly n bytes of fresh key from this site's device:
// enc_keys as SAE sae_id, naming peer_sae_id as the slave, n / (key_size/8)
// keys of key_size bits in as few calls as max_keys_per_request allows.
// n must be a whole number of keys (a multiple of key_size/8, KeyBytes):
// the peer's Fetch can only return whole keys. key is the keys' bytes
// concatenated in ids order, exactly what Fetch(ids) returns at the peer
// site. On error nothing is returned (keys already drawn in earlier calls
// of this Draw are wiped; the device has given them out, so they are lost,
// never reused).
func (c *Client) Draw(ctx context.Context, n int) (ids []string, key []byte, err error) {
	if n <= 0 || n > maxDrawBytes || n%c.keyBytes != 0 {
		return nil, nil, fmt.Errorf("%w: draw %d bytes, want a multiple of %d bytes (key_size %d bits) up to %d",
			ErrInvalidArgument, n, c.keyBytes, c.o.KeySize, maxDrawBytes)
	}
	count := n / c.keyBytes
	ids = make([]string, 0, count)
	key = make([]byte, 0, count*c.keyBytes)
	seen := make(map[string]bool, count)
	path := "/api/v1/keys/" + url.PathEscape(c.o.PeerSAEID) + "/enc_keys"
	for len(ids) < count {
		m := min(count-len(ids), c.o.MaxKeysPerRequest)
		kc, err := c.call(ctx, "enc_keys", path, etsi.KeyRequest{Number: m, Size: c.o.KeySize}, m)
		if err == nil {
			ids, key, err = c.appendKeys(ids, key, kc, m, nil, seen)
		}
		if err != nil {
			clear(key[:cap(key)])
			c.failure("enc_keys", err, m)
			return nil, nil, err
		}
		c.success("enc_keys", ids[len(ids)-m:], &c.keysDrawn)
	}
	return ids, key, nil
}

// Fetch gets from this site's device the keys the peer site drew under
// ids: dec_keys as SAE sae_id, naming peer_sae_id as the master, in as
// few calls as max_keys_per_request allows. The bytes come back in ids
// order. The device hands each key once: on error the keys of earlier
// calls of this Fetch are wiped and lost.
func (c *Client) Fetch(ctx context.Context, ids []string) ([]byte, error) {
	if len(ids) == 0 || len(ids) > maxDrawBytes/c.keyBytes {
		return nil, fmt.Errorf("%w: fetch %d keys, want 1 … %d", ErrInvalidArgument, len(ids), maxDrawBytes/c.keyBytes)
	}
	want := make([]string, len(ids))
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		cid, ok := etsi.CanonicalKeyID(id)
		if !ok {
			return nil, fmt.Errorf("%w: key ID %q is not a UUID", ErrInvalidArgument, id)
		}
		if seen[cid] {
			return nil, fmt.Errorf("%w: key ID %s given twice", ErrInvalidArgument, cid)
		}
		seen[cid] = true
		want[i] = cid
	}
	clear(seen)
	key := make([]byte, 0, len(want)*c.keyBytes)
	got := make([]string, 0, len(want))
	path := "/api/v1/keys/" + url.PathEscape(c.o.PeerSAEID) + "/dec_keys"
	for len(got) < len(want) {
		chunk := want[len(got):min(len(want), len(got)+c.o.MaxKeysPerRequest)]
		refs := make([]etsi.KeyIDRef, len(chunk))
		for i, id := range chunk {
			refs[i] = etsi.KeyIDRef{KeyID: id}
		}
		kc, err := c.call(ctx, "dec_keys", path, etsi.KeyIDs{KeyIDs: refs}, len(chunk))
		if err == nil {
			got, key, err = c.appendKeys(got, key, kc, len(chunk), chunk, seen)
		}
		if err != nil {
			clear(key[:cap(key)])
			c.failure("dec_keys", err, len(chunk))
			return nil, err
		}
		c.success("dec_keys", chunk, &c.keysFetched)
	}
	return key, nil
}

// appendKeys checks an answer of m keys and appends its IDs and bytes.
// With order (dec_keys), the answer must hold exactly those IDs, in any
// order, and the bytes are appended in that order; otherwise (enc_keys)
// in the answer's order. seen holds the IDs of earlier calls.
func (c *Client) appendKeys(ids []string, key []byte, kc etsi.KeyContainer, m int, order []string, seen map[string]bool) ([]string, []byte, error) {
	op := "enc_keys"
	if order != nil {
		op = "dec_keys"
	}
	bad := func(format string, a ...any) error {
		return &DeviceError{Op: op, URL: c.base, Kind: ErrMalformed, Message: fmt.Sprintf(format, a...)}
	}
	if len(kc.Keys) != m {
		return ids, key, bad("%d keys for %d asked", len(kc.Keys), m)
	}
	byID := make(map[string][]byte, m)
	defer func() {
		for _, b := range byID {
			clear(b)
		}
	}()
	var answerOrder []string
	for i, k := range kc.Keys {
		id, ok := etsi.CanonicalKeyID(k.KeyID)
		if !ok {
			return ids, key, bad("key %d: key_ID is not a UUID", i)
		}
		if byID[id] != nil || seen[id] {
			return ids, key, bad("key %d: key_ID %s given twice", i, id)
		}
		b, err := base64.StdEncoding.Strict().DecodeString(k.Key)
		if err != nil {
			return ids, key, bad("key %d (%s): not standard base64", i, id)
		}
		if len(b) != c.keyBytes {
			clear(b)
			return ids, key, bad("key %d (%s): %d bits, want key_size %d", i, id, len(b)*8, c.o.KeySize)
		}
		byID[id] = b
		answerOrder = append(answerOrder, id)
	}
	if order == nil {
		order = answerOrder
	}
	for _, id := range order {
		if byID[id] == nil {
			return ids, key, bad("key %s asked for, not in the answer", id)
		}
	}
	for _, id := range order {
		seen[id] = true
		ids = append(ids, id)
		key = append(key, byID[id]...)
	}
	return ids, key, nil
}

// call POSTs body to the device and decodes the Key container of an
// answer expected to hold m keys.
func (c *Client) call(ctx context.Context, op, path string, body any, m int) (etsi.KeyContainer, error) {
	var kc etsi.KeyContainer
	if c.life.Err() != nil {
		return kc, fmt.Errorf("etsi014: %s: %w", op, ErrClosed)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(c.life, func() { cancel(ErrClosed) })
	defer stop()
	cctx, cancelT := context.WithTimeoutCause(cctx, c.timeout, errCallTimeout)
	defer cancelT()

	reqBody, err := json.Marshal(body)
	if err != nil {
		return kc, fmt.Errorf("etsi014: encode %s request: %w", op, err)
	}
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, c.base+path, bytes.NewReader(reqBody))
	if err != nil {
		return kc, fmt.Errorf("etsi014: %s request: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	c.count()
	resp, err := c.hc.Do(req)
	if err != nil {
		return kc, c.transportError(ctx, cctx, op, err)
	}
	defer resp.Body.Close()
	// Base64 takes 4/3 of the key bytes; allow for the IDs and members.
	limit := int64(m)*int64(c.keyBytes*2+256) + 64<<10
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		clear(data)
		return kc, c.transportError(ctx, cctx, op, err)
	}
	defer clear(data)
	if cctx.Err() != nil {
		// The deadline or a cancellation cut the answer short: whatever
		// was read is not the device's fault.
		return kc, c.transportError(ctx, cctx, op, context.Cause(cctx))
	}
	if resp.StatusCode/100 != 2 {
		de := &DeviceError{Op: op, URL: c.base, Kind: ErrRefused, Status: resp.StatusCode}
		var e etsi.Error
		if json.Unmarshal(data, &e) == nil {
			de.Message = deviceMessage(e.Message)
		}
		return kc, de
	}
	if int64(len(data)) > limit {
		return kc, &DeviceError{Op: op, URL: c.base, Kind: ErrMalformed,
			Message: fmt.Sprintf("answer larger than %d bytes for %d keys", limit, m)}
	}
	if err := json.Unmarshal(data, &kc); err != nil {
		return kc, &DeviceError{Op: op, URL: c.base, Kind: ErrMalformed, Message: jsonProblem(err)}
	}
	return kc, nil
}

// jsonProblem says what is wrong with a JSON answer without quoting it.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("JSON member %q has the wrong type (%s)", te.Field, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	default:
		return "malformed JSON"
	}
}

func (c *Client) count() {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
}

// success records a call that delivered keys.
func (c *Client) success(op string, ids []string, counter *uint64) {
	c.mu.Lock()
	c.reachKnown, c.reachable = true, true
	c.lastOK = time.Now()
	*counter += uint64(len(ids))
	c.mu.Unlock()
	c.log.Debug("etsi014 device call", "op", op, "keys", len(ids), "key_ids", ids)
}

// failure records and logs a failed call (not a caller's cancellation).
func (c *Client) failure(op string, err error, keys int) {
	var de *DeviceError
	if !errors.As(err, &de) {
		c.log.Debug("etsi014 device call abandoned", "op", op, "err", err)
		return
	}
	c.mu.Lock()
	c.failed++
	c.reachKnown = true
	c.reachable = !errors.Is(de.Kind, ErrUnreachable) && !errors.Is(de.Kind, ErrTimeout) && !errors.Is(de.Kind, ErrDisconnected)
	c.lastErr, c.lastErrAt = err.Error(), time.Now()
	c.mu.Unlock()
	attrs := []any{"op", op, "kind", de.Kind.Error(), "keys", keys, "err", err}
	if de.Status != 0 {
		attrs = append(attrs, "status", de.Status)
	}
	c.log.Warn("etsi014 device call failed", attrs...)
}

// Health is the device as the last calls found it. It makes no call:
// reachable is known after the first one.
func (c *Client) Health() quantum.Health {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := map[string]any{
		"url": c.base, "sae_id": c.o.SAEID, "peer_sae_id": c.o.PeerSAEID,
		"key_size": c.o.KeySize, "max_keys_per_request": c.o.MaxKeysPerRequest,
		"keys_drawn": c.keysDrawn, "keys_fetched": c.keysFetched,
		"calls": c.calls, "failed_calls": c.failed,
	}
	if c.reachKnown {
		d["reachable"] = c.reachable
	}
	if !c.lastOK.IsZero() {
		d["last_success"] = c.lastOK.UTC().Format(time.RFC3339Nano)
	}
	if !c.lastErrAt.IsZero() {
		d["last_error_at"] = c.lastErrAt.UTC().Format(time.RFC3339Nano)
	}
	ok := !c.closed && (c.lastErrAt.IsZero() || c.lastOK.After(c.lastErrAt))
	if c.closed {
		d["closed"] = true
	}
	return quantum.Health{Driver: "etsi014", OK: ok, LastError: c.lastErr, Details: d}
}

// Close ends calls in flight (they fail with ErrClosed) and drops idle
// connections. Later calls fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.closeNow(ErrClosed)
	c.hc.CloseIdleConnections()
	return nil
}
