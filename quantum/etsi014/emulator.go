package etsi014

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"qkdkms/etsi"
	"qkdkms/etsi/pki"
	"qkdkms/quantum"
)

// EmulatorConfig configures NewEmulator.
type EmulatorConfig struct {
	// Dir receives the two devices' PKIs: Dir/a and Dir/b each hold the
	// device's own CA (ca.crt, ca.key), its server certificate
	// (device.crt, device.key) and the client certificate of the site's
	// SAE at that device (sae.crt, sae.key). Required.
	Dir string
	// SAEA and SAEB are the SAE IDs of site A at device A and of site B
	// at device B; defaults "site-a" and "site-b".
	SAEA, SAEB string
	// KeySize is the only key size the devices serve, in bits; default
	// DefaultKeySize.
	KeySize int
	// MaxKeysPerRequest is the devices' max_key_per_request; default 128.
	MaxKeysPerRequest int
	// Capacity bounds the keys given out by one device and not yet
	// fetched at the other (enc_keys beyond it answers 503 insufficient
	// keys); default 65536.
	Capacity int
	// AddrA and AddrB are the devices' listen addresses; default
	// 127.0.0.1:0.
	AddrA, AddrB string
	// Log receives each device's audit records (etsi call: SAE, key IDs,
	// status; never key bits) and server errors; nil discards.
	Log *slog.Logger
}

// Emulator is a pair of emulated QKD key-delivery devices, A and B, linked
// as by their own quantum channel: a key device A gives out by enc_keys is
// handed once by device B's dec_keys (and the other way round). Each
// device serves ETSI GS QKD 014 (status, enc_keys, dec_keys; qkdkms's own
// etsi handler) over HTTPS with its own CA, and authenticates its SAE by
// client certificate. Faults can be injected per device (SetFault).
type Emulator struct {
	A, B *Device
	cfg  EmulatorConfig

	mu      sync.Mutex
	pending map[string]pendingKey // by key ID
}

type pendingKey struct {
	from          *Device
	master, slave string
	bits          []byte
}

// FaultKind is what a device does wrong.
type FaultKind int

// The faults a device can be made to show.
const (
	NoFault FaultKind = iota
	// FaultDelay holds each answer for Delay, or drops the call when the
	// client gives up first (no key given out).
	FaultDelay
	// FaultDrop serves the call (keys are given out, and handed once at
	// dec_keys), then resets the connection in the middle of the answer.
	FaultDrop
	// FaultCorrupt answers keys one bit off from what the other device
	// hands out: valid ETSI answers with different bytes at the two ends.
	FaultCorrupt
	// FaultUnavailable answers 503 with the ETSI error body; no key is
	// given out.
	FaultUnavailable
	// FaultMalformed serves the call, then answers 200 with the JSON
	// body cut in half.
	FaultMalformed
	// FaultShortKeys serves the call, then answers each key one byte
	// short.
	FaultShortKeys
	// FaultWrongIDs serves the call, then answers a fresh key ID in
	// place of the first one.
	FaultWrongIDs
)

var faultNames = map[FaultKind]string{NoFault: "none", FaultDelay: "delay", FaultDrop: "drop",
	FaultCorrupt: "corrupt", FaultUnavailable: "unavailable", FaultMalformed: "malformed",
	FaultShortKeys: "short_keys", FaultWrongIDs: "wrong_ids"}

func (k FaultKind) String() string {
	if s, ok := faultNames[k]; ok {
		return s
	}
	return "fault(" + strconv.Itoa(int(k)) + ")"
}

// Fault is a device's injected misbehaviour on the key calls (enc_keys,
// dec_keys; status is always served).
type Fault struct {
	Kind  FaultKind
	Delay time.Duration // FaultDelay
	// Calls is how many key calls show the fault before it clears
	// itself; 0 means until SetFault(Fault{}).
	Calls int
}

// Device is one emulated QKD device.
type Device struct {
	emu     *Emulator
	name    string // "a" or "b"
	kmeID   string
	sae     string // the local site's SAE
	peerSAE string // the other site's SAE (at the other device)
	dir     string
	url     string
	handler http.Handler
	srv     *http.Server
	done    chan struct{}
	ctx     context.Context // ends at stop: ends the calls held by FaultDelay
	cancel  context.CancelFunc

	mu     sync.Mutex
	fault  Fault
	served int // key calls answered
}

// NewEmulator starts two devices with fresh certificates under cfg.Dir
// (a CA already there is kept). Site A's driver options are A.Options(),
// site B's B.Options(); marshalled to JSON they are the `options` of each
// site's links[] entry with "driver": "etsi014". Close stops both.
func NewEmulator(cfg EmulatorConfig) (*Emulator, error) {
	if cfg.Dir == "" {
		return nil, errors.New("etsi014 emulator: Dir is required")
	}
	if cfg.SAEA == "" {
		cfg.SAEA = "site-a"
	}
	if cfg.SAEB == "" {
		cfg.SAEB = "site-b"
	}
	if cfg.KeySize == 0 {
		cfg.KeySize = DefaultKeySize
	}
	if cfg.MaxKeysPerRequest == 0 {
		cfg.MaxKeysPerRequest = 128
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 1 << 16
	}
	if cfg.AddrA == "" {
		cfg.AddrA = "127.0.0.1:0"
	}
	if cfg.AddrB == "" {
		cfg.AddrB = "127.0.0.1:0"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case !etsi.ValidSAEID(cfg.SAEA) || !etsi.ValidSAEID(cfg.SAEB) || cfg.SAEA == cfg.SAEB:
		return nil, fmt.Errorf("etsi014 emulator: SAE IDs %q and %q: want two distinct valid SAE IDs", cfg.SAEA, cfg.SAEB)
	case cfg.KeySize < minKeySize || cfg.KeySize > maxKeySize || cfg.KeySize%8 != 0:
		return nil, fmt.Errorf("etsi014 emulator: key size %d bits: want a multiple of 8 in [%d, %d]", cfg.KeySize, minKeySize, maxKeySize)
	case cfg.MaxKeysPerRequest < 1 || cfg.Capacity < cfg.MaxKeysPerRequest:
		return nil, fmt.Errorf("etsi014 emulator: max keys per request %d, capacity %d: want 1 ≤ max ≤ capacity", cfg.MaxKeysPerRequest, cfg.Capacity)
	}
	e := &Emulator{cfg: cfg, pending: map[string]pendingKey{}}
	e.A = &Device{emu: e, name: "a", kmeID: "qkd-device-a", sae: cfg.SAEA, peerSAE: cfg.SAEB}
	e.B = &Device{emu: e, name: "b", kmeID: "qkd-device-b", sae: cfg.SAEB, peerSAE: cfg.SAEA}
	if err := e.A.start(cfg.AddrA); err != nil {
		return nil, err
	}
	if err := e.B.start(cfg.AddrB); err != nil {
		_ = e.A.stop()
		return nil, err
	}
	return e, nil
}

// Close stops both devices and forgets the keys not yet fetched.
func (e *Emulator) Close() error {
	err := errors.Join(e.A.stop(), e.B.stop())
	e.mu.Lock()
	for id, p := range e.pending {
		clear(p.bits)
		delete(e.pending, id)
	}
	e.mu.Unlock()
	return err
}

// Pending is the number of keys given out by one device and not yet
// fetched at the other.
func (e *Emulator) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending)
}

func (d *Device) start(addr string) error {
	d.dir = filepath.Join(d.emu.cfg.Dir, d.name)
	ca, err := pki.Init(d.dir)
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s address %q: %w", d.name, addr, err)
	}
	srvLeaf, err := ca.IssueNode(d.kmeID, d.kmeID, []string{host})
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	saeLeaf, err := ca.IssueSAE(d.sae)
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	if err := errors.Join(srvLeaf.Write(d.dir, "device"), saeLeaf.Write(d.dir, "sae")); err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	srvCert, err := srvLeaf.TLS()
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("etsi014 emulator: device %s: %w", d.name, err)
	}
	tlsConf := pki.ServerConfig(srvCert, ca.Pool())
	tlsConf.NextProtos = []string{"http/1.1"} // FaultDrop hijacks the connection
	lg := d.emu.cfg.Log.With("device", d.kmeID)
	d.handler = etsi.NewHandler(deviceBackend{d}, etsi.Options{Audit: lg, Log: lg})
	d.srv = &http.Server{
		Handler:           d,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(slogWriter{lg}, "", 0),
	}
	d.url = "https://" + ln.Addr().String()
	d.done = make(chan struct{})
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.srv.BaseContext = func(net.Listener) context.Context { return d.ctx }
	go func() {
		defer close(d.done)
		_ = d.srv.Serve(tls.NewListener(ln, tlsConf))
	}()
	return nil
}

func (d *Device) stop() error {
	if d.srv == nil {
		return nil
	}
	d.cancel()
	err := d.srv.Close()
	<-d.done
	return err
}

// URL is the device's ETSI 014 base URL.
func (d *Device) URL() string { return d.url }

// SAEID is the SAE ID of the site this device serves.
func (d *Device) SAEID() string { return d.sae }

// Dir holds the device's PKI files.
func (d *Device) Dir() string { return d.dir }

// Options are the "etsi014" driver options with which the site of this
// device reaches it.
func (d *Device) Options() Options {
	return Options{URL: d.url, SAEID: d.sae, PeerSAEID: d.peerSAE, KeySize: d.emu.cfg.KeySize,
		MaxKeysPerRequest: d.emu.cfg.MaxKeysPerRequest,
		CAFile:            filepath.Join(d.dir, "ca.crt"), CertFile: filepath.Join(d.dir, "sae.crt"),
		KeyFile: filepath.Join(d.dir, "sae.key"), Timeout: quantum.Duration(DefaultTimeout)}
}

// SetFault makes the device show f on its next key calls (Fault{} clears).
func (d *Device) SetFault(f Fault) {
	d.mu.Lock()
	d.fault = f
	d.mu.Unlock()
}

// Served is the number of key calls (enc_keys, dec_keys) the device
// answered or dropped.
func (d *Device) Served() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.served
}

// takeFault is the fault for one key call.
func (d *Device) takeFault() Fault {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.served++
	f := d.fault
	if f.Calls > 0 {
		if d.fault.Calls--; d.fault.Calls == 0 {
			d.fault = Fault{}
		}
	}
	return f
}

// ServeHTTP serves the ETSI API with the device's fault.
func (d *Device) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isKeyCall(r.URL.Path) {
		d.handler.ServeHTTP(w, r)
		return
	}
	f := d.takeFault()
	r = r.WithContext(context.WithValue(r.Context(), faultKey{}, f.Kind))
	switch f.Kind {
	case FaultDelay:
		// Read the request first: the server notices a client that gave
		// up (and cancels r.Context) only once the body is consumed.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, etsi.DefaultMaxBodyBytes))
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client gave up: close the connection without an
			// answer (returning would send an empty 200).
			panic(http.ErrAbortHandler)
		}
		d.handler.ServeHTTP(w, r)
	case FaultDrop, FaultMalformed, FaultShortKeys, FaultWrongIDs:
		bw := &bufferedWriter{header: http.Header{}}
		d.handler.ServeHTTP(bw, r)
		defer clear(bw.body.Bytes())
		d.answerBadly(w, bw, f.Kind)
	default:
		d.handler.ServeHTTP(w, r)
	}
}

func isKeyCall(path string) bool {
	n := len(path)
	return n > 9 && (path[n-9:] == "/enc_keys" || path[n-9:] == "/dec_keys")
}

type faultKey struct{}

func faultOf(ctx context.Context) FaultKind {
	k, _ := ctx.Value(faultKey{}).(FaultKind)
	return k
}

// answerBadly writes the buffered answer bw damaged as kind says.
func (d *Device) answerBadly(w http.ResponseWriter, bw *bufferedWriter, kind FaultKind) {
	body := bw.body.Bytes()
	switch kind {
	case FaultDrop:
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic(http.ErrAbortHandler)
		}
		conn, buf, err := hj.Hijack()
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		defer conn.Close()
		if tc, ok := conn.(*tls.Conn); ok {
			if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
				_ = tcp.SetLinger(0) // close with a reset
			}
		}
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			bw.status(), http.StatusText(bw.status()), len(body))
		_, _ = buf.Write(body[:len(body)/2])
		_ = buf.Flush()
		return
	case FaultMalformed:
		body = body[:len(body)/2]
	case FaultShortKeys, FaultWrongIDs:
		var kc etsi.KeyContainer
		if bw.status() == http.StatusOK && json.Unmarshal(body, &kc) == nil && len(kc.Keys) > 0 {
			for i := range kc.Keys {
				if kind == FaultWrongIDs {
					kc.Keys[i].KeyID = uuid.NewString()
					break
				}
				b, err := base64.StdEncoding.DecodeString(kc.Keys[i].Key)
				if err == nil && len(b) > 0 {
					kc.Keys[i].Key = base64.StdEncoding.EncodeToString(b[:len(b)-1])
				}
				clear(b)
			}
			body, _ = json.Marshal(kc)
		}
	}
	for k, v := range bw.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(bw.status())
	_, _ = w.Write(body)
}

// bufferedWriter holds an answer until the fault is applied to it.
type bufferedWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.header }
func (b *bufferedWriter) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}
func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}
func (b *bufferedWriter) status() int {
	if b.code == 0 {
		return http.StatusOK
	}
	return b.code
}

// slogWriter carries the http.Server's error log to slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("etsi014 emulator server", "line", string(bytes.TrimSpace(p)))
	return len(p), nil
}

// deviceBackend is a device's key store as the etsi handler sees it.
type deviceBackend struct{ d *Device }

var _ etsi.Backend = deviceBackend{}

func (b deviceBackend) KMEID() string { return b.d.kmeID }

func (b deviceBackend) peer() *Device {
	if b.d == b.d.emu.A {
		return b.d.emu.B
	}
	return b.d.emu.A
}

func (b deviceBackend) Connection(_ context.Context, master, slave string) (etsi.ConnectionInfo, error) {
	cfg := b.d.emu.cfg
	ci := etsi.ConnectionInfo{MasterSAE: master, SlaveSAE: slave, KeySize: cfg.KeySize,
		MaxKeyCount: cfg.Capacity, MaxKeyPerRequest: cfg.MaxKeysPerRequest,
		MinKeySize: cfg.KeySize, MaxKeySize: cfg.KeySize,
		StoredKeyCount: cfg.Capacity - b.d.emu.Pending()}
	switch {
	case master == b.d.sae && slave == b.d.peerSAE:
		ci.SourceKME, ci.TargetKME = b.d.kmeID, b.peer().kmeID
	case master == b.d.peerSAE && slave == b.d.sae:
		ci.SourceKME, ci.TargetKME = b.peer().kmeID, b.d.kmeID
	default:
		return etsi.ConnectionInfo{}, etsi.ErrUnknownSAE
	}
	return ci, nil
}

func (b deviceBackend) EncKeys(ctx context.Context, r etsi.EncRequest) ([]etsi.Key, error) {
	kind := faultOf(ctx)
	if kind == FaultUnavailable {
		return nil, fmt.Errorf("%w: injected fault", etsi.ErrUnavailable)
	}
	if r.MasterSAE != b.d.sae || r.SlaveSAE != b.d.peerSAE || len(r.Additional) > 0 {
		return nil, etsi.ErrUnknownSAE
	}
	if r.Size != b.d.emu.cfg.KeySize {
		return nil, fmt.Errorf("%w: size %d", etsi.ErrBadRequest, r.Size)
	}
	e := b.d.emu
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.pending)+r.Number > e.cfg.Capacity {
		return nil, etsi.ErrInsufficientKeys
	}
	keys := make([]etsi.Key, r.Number)
	for i := range keys {
		bits := make([]byte, r.Size/8)
		_, _ = rand.Read(bits)
		id := uuid.NewString()
		e.pending[id] = pendingKey{from: b.d, master: r.MasterSAE, slave: r.SlaveSAE, bits: bits}
		keys[i] = etsi.Key{KeyID: id, Bits: answer(bits, kind)}
	}
	return keys, nil
}

func (b deviceBackend) DecKeys(ctx context.Context, r etsi.DecRequest) ([]etsi.Key, error) {
	kind := faultOf(ctx)
	if kind == FaultUnavailable {
		return nil, fmt.Errorf("%w: injected fault", etsi.ErrUnavailable)
	}
	if r.Seed || r.SlaveSAE != b.d.sae {
		return nil, etsi.ErrUnauthorized
	}
	e := b.d.emu
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range r.KeyIDs {
		p, ok := e.pending[id]
		if !ok || p.from == b.d || p.master != r.MasterSAE || p.slave != r.SlaveSAE {
			return nil, fmt.Errorf("%w: %s", etsi.ErrKeysNotFound, id)
		}
	}
	keys := make([]etsi.Key, len(r.KeyIDs))
	for i, id := range r.KeyIDs {
		p := e.pending[id]
		delete(e.pending, id)
		keys[i] = etsi.Key{KeyID: id, Bits: answer(p.bits, kind)}
		clear(p.bits)
	}
	return keys, nil
}

// answer is the key as the device answers it: with FaultCorrupt one bit
// off the stored key.
func answer(bits []byte, kind FaultKind) []byte {
	out := bytes.Clone(bits)
	if kind == FaultCorrupt {
		out[0] ^= 1
	}
	return out
}

func (b deviceBackend) RegisterConnection(context.Context, etsi.ConnectionInfo) error {
	return fmt.Errorf("%w: an emulated device has fixed connections", etsi.ErrBadRequest)
}

func (b deviceBackend) ConnectionsOf(_ context.Context, sae string) ([]etsi.ConnectionInfo, error) {
	var out []etsi.ConnectionInfo
	for _, m := range [][2]string{{b.d.sae, b.d.peerSAE}, {b.d.peerSAE, b.d.sae}} {
		if sae == m[0] || sae == m[1] {
			ci, err := b.Connection(context.Background(), m[0], m[1])
			if err != nil {
				return nil, err
			}
			out = append(out, ci)
		}
	}
	return out, nil
}
