// Package workload drives SAEs against a harness cluster and records every
// call in a history.History: master SAEs ask enc_keys at a set rate through
// every node of their site, slave SAEs fetch each key once by dec_keys at
// the peer site, and every answer is classified ok, fail or ambiguous so
// that testcluster/checker can hold the run to the invariants I1–I7
// (README). Key bytes stay in memory; the history keeps digests (I5).
package workload

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"qkdkms/testcluster/harness"
	"qkdkms/testcluster/history"
)

// RawKey is a key as an SAE received it (in memory only).
type RawKey struct {
	ID    string
	Bytes []byte
}

// CallResult is the classified answer of one ETSI call.
type CallResult struct {
	Outcome history.Outcome
	Status  int
	Err     error
	Keys    []RawKey
}

// SAE is an ETSI GS QKD 014 client for the workload: it speaks the wire
// format directly so that every call can be classified exactly (a status
// came back: ok/fail; the request may have been sent but no answer came:
// ambiguous; the connection was refused: fail).
type SAE struct {
	ID    string
	HTTP  *http.Client
	Addrs []string // nodes of the SAE's own site; calls rotate over them
	next  atomic.Uint64
}

// NextAddr returns the next node address in rotation.
func (s *SAE) NextAddr() string {
	return s.Addrs[int(s.next.Add(1)-1)%len(s.Addrs)]
}

type wireKey struct {
	KeyID string `json:"key_ID"`
	Key   string `json:"key"`
}

type wireContainer struct {
	Keys []wireKey `json:"keys"`
}

type wireKeyIDs struct {
	KeyIDs []struct {
		KeyID string `json:"key_ID"`
	} `json:"key_IDs"`
}

type wireError struct {
	Message string `json:"message"`
}

// Enc asks addr for number keys of size bits for slave (size 0 = default).
func (s *SAE) Enc(ctx context.Context, addr, slave string, number, size int) CallResult {
	body := map[string]int{"number": number}
	if size > 0 {
		body["size"] = size
	}
	b, _ := json.Marshal(body)
	return s.call(ctx, addr, "/api/v1/keys/"+url.PathEscape(slave)+"/enc_keys", b)
}

// Dec fetches keys by ID from addr, issued by master.
func (s *SAE) Dec(ctx context.Context, addr, master string, ids []string) CallResult {
	var req wireKeyIDs
	for _, id := range ids {
		req.KeyIDs = append(req.KeyIDs, struct {
			KeyID string `json:"key_ID"`
		}{id})
	}
	b, _ := json.Marshal(req)
	return s.call(ctx, addr, "/api/v1/keys/"+url.PathEscape(master)+"/dec_keys", b)
}

func (s *SAE) call(ctx context.Context, addr, path string, body []byte) CallResult {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return CallResult{Outcome: history.Failed, Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.HTTP.Do(req)
	if err != nil {
		if notSent(err) {
			return CallResult{Outcome: history.Failed, Err: err}
		}
		return CallResult{Outcome: history.Ambiguous, Err: err}
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		var we wireError
		_ = json.Unmarshal(rb, &we)
		return CallResult{Outcome: history.Failed, Status: resp.StatusCode, Err: fmt.Errorf("HTTP %d: %s", resp.StatusCode, we.Message)}
	}
	if err != nil {
		return CallResult{Outcome: history.Ambiguous, Status: resp.StatusCode, Err: fmt.Errorf("read body: %w", err)}
	}
	var kc wireContainer
	if err := json.Unmarshal(rb, &kc); err != nil {
		return CallResult{Outcome: history.Ambiguous, Status: resp.StatusCode, Err: fmt.Errorf("decode 200 body: %w", err)}
	}
	out := CallResult{Outcome: history.OK, Status: resp.StatusCode}
	for _, k := range kc.Keys {
		kb, err := base64.StdEncoding.DecodeString(k.Key)
		if err != nil {
			return CallResult{Outcome: history.Ambiguous, Status: resp.StatusCode, Err: fmt.Errorf("key %s: bad base64: %w", k.KeyID, err)}
		}
		out.Keys = append(out.Keys, RawKey{ID: k.KeyID, Bytes: kb})
	}
	return out
}

// notSent reports errors that prove the request never reached a server:
// refused or unroutable connections and failed TLS handshakes.
func notSent(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Options configures a Workload.
type Options struct {
	Master, Slave *SAE
	// Rate is enc_keys calls per second over all masters (default 20).
	Rate float64
	// Number of keys per call (default 1) and Size in bits (0 = key_size).
	Number, Size int
	// Count bounds enc_keys calls (0 = no bound); Duration bounds the run
	// (default 10 s). The first reached ends the run.
	Count    int
	Duration time.Duration
	// Timeout per call (default 3 s); a call that times out is ambiguous.
	Timeout time.Duration
	// Masters and Slaves are the numbers of concurrent clients (default 2).
	Masters, Slaves int
	// NodeOf names the node behind an address, for the history.
	NodeOf func(addr string) string
	// KeepKeys keeps the issued key bytes (for the at-rest scan) in the
	// returned Workload. They never enter the history.
	KeepKeys bool
}

func (o Options) withDefaults() Options {
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Number <= 0 {
		o.Number = 1
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.Masters <= 0 {
		o.Masters = 2
	}
	if o.Slaves <= 0 {
		o.Slaves = 2
	}
	if o.NodeOf == nil {
		o.NodeOf = func(a string) string { return a }
	}
	return o
}

// Workload is a running or finished workload: its history and the keys it
// still has to fetch.
type Workload struct {
	o    Options
	h    *history.History
	mu   sync.Mutex
	todo map[string]bool // issued key IDs not yet fetched
	keys map[string][]byte
}

// NewWorkload prepares a workload recording into h.
func New(h *history.History, o Options) *Workload {
	return &Workload{o: o.withDefaults(), h: h, todo: map[string]bool{}, keys: map[string][]byte{}}
}

// Pending is the number of issued keys not yet fetched.
func (w *Workload) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.todo)
}

// Keys returns the issued key bytes (KeepKeys only), for the at-rest scan.
func (w *Workload) Keys() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([][]byte, 0, len(w.keys))
	for _, k := range w.keys {
		out = append(out, k)
	}
	return out
}

// Run issues enc_keys at the set rate and fetches every issued key with
// dec_keys at the peer site, until Count, Duration or ctx ends it.
func (w *Workload) Run(ctx context.Context) {
	o := w.o
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
	defer tick.Stop()
	tokens := make(chan struct{})
	fetch := make(chan []string, 1024)
	var wg sync.WaitGroup
	var issued atomic.Int64
	for i := 0; i < o.Masters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
				ids := w.enc(ctx, fmt.Sprintf("master-%d", i), false)
				if len(ids) > 0 {
					select {
					case fetch <- ids:
					default: // slaves are behind: Drain picks these up
					}
				}
			}
		}()
	}
	var swg sync.WaitGroup
	for i := 0; i < o.Slaves; i++ {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for ids := range fetch {
				if ctx.Err() != nil {
					continue // leave to Drain
				}
				w.dec(ctx, fmt.Sprintf("slave-%d", i), ids, false)
			}
		}()
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if o.Count > 0 && issued.Load() >= int64(o.Count) {
				break loop
			}
			select {
			case tokens <- struct{}{}:
				issued.Add(1)
			default: // every master busy: this tick is skipped (rate is an upper bound)
			}
		}
	}
	close(tokens)
	wg.Wait()
	close(fetch)
	swg.Wait()
}

// Drain fetches every key still pending until none is left or window
// passes, retrying failed fetches; its calls are recorded as drain ops.
func (w *Workload) Drain(ctx context.Context, window time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	for {
		w.mu.Lock()
		var ids []string
		for id := range w.todo {
			ids = append(ids, id)
			if len(ids) == w.batch() {
				break
			}
		}
		w.mu.Unlock()
		if len(ids) == 0 {
			return 0
		}
		res := w.dec(ctx, "drain", ids, true)
		if res.Outcome != history.OK {
			// A batch refused as a whole (one key lost) must not hide the
			// others: retry them one at a time.
			if res.Status == http.StatusBadRequest && len(ids) > 1 {
				for _, id := range ids {
					if r := w.dec(ctx, "drain", []string{id}, true); r.Status == http.StatusBadRequest {
						w.giveUp(id)
					}
				}
			} else if res.Status == http.StatusBadRequest || res.Status == http.StatusUnauthorized {
				w.giveUp(ids[0])
			}
			select {
			case <-ctx.Done():
				return w.Pending()
			case <-time.After(200 * time.Millisecond):
			}
		}
		if ctx.Err() != nil {
			return w.Pending()
		}
	}
}

// batch is the drain batch size: the workload's Number.
func (w *Workload) batch() int { return max(w.o.Number, 1) }

// giveUp drops a key the KME definitively refuses (the checker reports it).
func (w *Workload) giveUp(id string) {
	w.mu.Lock()
	delete(w.todo, id)
	w.mu.Unlock()
}

func (w *Workload) enc(ctx context.Context, client string, drain bool) []string {
	o := w.o
	addr := o.Master.NextAddr()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Timeout)
	defer cancel()
	start := time.Now()
	res := o.Master.Enc(cctx, addr, o.Slave.ID, o.Number, o.Size)
	op := history.Op{Client: client, Kind: history.OpEnc, Node: o.NodeOf(addr), Master: o.Master.ID, Slave: o.Slave.ID,
		Number: o.Number, Start: start, End: time.Now(), Outcome: res.Outcome, Status: res.Status, Drain: drain}
	if res.Err != nil {
		op.Err = res.Err.Error()
	}
	var ids []string
	w.mu.Lock()
	for _, k := range res.Keys {
		op.Keys = append(op.Keys, history.NewKeyRecord(k.ID, k.Bytes))
		ids = append(ids, k.ID)
		w.todo[k.ID] = true
		if o.KeepKeys {
			w.keys[k.ID] = k.Bytes
		}
	}
	w.mu.Unlock()
	w.h.Add(op)
	return ids
}

func (w *Workload) dec(ctx context.Context, client string, ids []string, drain bool) CallResult {
	o := w.o
	addr := o.Slave.NextAddr()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Timeout)
	defer cancel()
	start := time.Now()
	res := o.Slave.Dec(cctx, addr, o.Master.ID, ids)
	op := history.Op{Client: client, Kind: history.OpDec, Node: o.NodeOf(addr), Master: o.Master.ID, Slave: o.Slave.ID,
		KeyIDs: ids, Start: start, End: time.Now(), Outcome: res.Outcome, Status: res.Status, Drain: drain}
	if res.Err != nil {
		op.Err = res.Err.Error()
	}
	w.mu.Lock()
	for _, k := range res.Keys {
		op.Keys = append(op.Keys, history.NewKeyRecord(k.ID, k.Bytes))
		delete(w.todo, k.ID)
	}
	w.mu.Unlock()
	w.h.Add(op)
	return res
}

// Client returns an SAE client for SAE name talking to the nodes of site
// of c, with the certificate the harness issued for name.
func Client(c *harness.Cluster, name, site string) (*SAE, error) {
	s := c.Layout.Site(site)
	if s == nil {
		return nil, fmt.Errorf("%w: site %s", harness.ErrUnknownNode, site)
	}
	h, err := c.HTTPClient(name)
	if err != nil {
		return nil, err
	}
	return &SAE{ID: name, HTTP: h, Addrs: s.Addrs()}, nil
}
