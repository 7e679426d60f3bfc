// Package session runs one BB84 post-processing session: each party's half
// of the step chain sift → estimate → reconcile → verify → amplify, over a
// quantum.Channel, with the steps supplied by a plugin Runner (WASM or
// native). Alice's half (Alice) and Bob's half (Bob) share nothing but the
// channel, so they can run in two processes.
//
// Every disclosed bit is counted per step; the final length comes from the
// finite-key bound of Lim et al. 2014 (quantum/finitekey). A session aborts
// with no key on either side (I6) when the bound leaves no key (QBER too high),
// when verification fails, on a plugin error, when the peer aborts or
// disagrees on the plugin set, or when ctx ends.
package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/plugins/steps/bits"
	"qkdkms/plugins/steps/estimate"
	"qkdkms/plugins/steps/sift"
	"qkdkms/plugins/steps/wire"
	"qkdkms/quantum"
	"qkdkms/quantum/finitekey"
)

// Errors. Every abort wraps ErrAbort.
var (
	ErrAbort    = errors.New("session: aborted")
	ErrNoKey    = fmt.Errorf("%w: finite-key bound leaves no key", ErrAbort)
	ErrVerify   = fmt.Errorf("%w: verification failed", ErrAbort)
	ErrMismatch = fmt.Errorf("%w: parties disagree on plugins or parameters", ErrAbort)
	ErrPeer     = fmt.Errorf("%w: peer aborted", ErrAbort)
	ErrProtocol = fmt.Errorf("%w: protocol error", ErrAbort)
)

// Config is one party's session configuration. Both parties must agree on
// Runner.Identity(), TagBits and EpsSec; Alice's Pulses and IntensityProbs
// are sent to Bob.
type Config struct {
	Runner host.Runner
	// Pulses per session (Alice).
	Pulses uint64
	// IntensityProbs are Alice's design probabilities p_k of the three
	// intensities (Alice; must match the source).
	IntensityProbs []float64
	// TagBits is the verification tag length t (1..64): ε_cor = 2^-t.
	// Default 64.
	TagBits int
	// EpsSec is the secrecy parameter ε_sec. Default 1e-9.
	EpsSec float64
	// Timeout bounds the whole session. Default 10 minutes.
	Timeout time.Duration
	// Rand supplies the plugins' seeds and the block ID. Default crypto/rand.
	Rand   io.Reader
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Runner == nil {
		return errors.New("session: no plugin runner")
	}
	if c.TagBits == 0 {
		c.TagBits = 64
	}
	if c.TagBits < 1 || c.TagBits > 64 {
		return fmt.Errorf("session: TagBits %d not in 1..64", c.TagBits)
	}
	if c.EpsSec == 0 {
		c.EpsSec = 1e-9
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// StepMetrics is what one step cost.
type StepMetrics struct {
	Kind      steps.Kind
	Plugin    string // name@version
	Leaked    uint64 // bits about the key made public
	Disclosed uint64 // public bits that are not key bits
	Corrected uint64 // bits changed (reconcile, Bob)
	Rounds    uint32 // messages sent and received
	Wall      time.Duration
}

// Result of a successful session. Key is empty on every error.
type Result struct {
	BlockID    [16]byte
	Key        []byte // FinalBits bits, LSB first (FinalBits is a multiple of 8)
	FinalBits  int
	Pulses     uint64
	Detections int
	SiftedBits int     // n_Z, the key block before reconciliation
	TestBits   int     // n_X, disclosed for estimation
	QBERX      float64 // measured on the disclosed X bits
	QBERZ      float64 // errors corrected by reconciliation / n_Z
	LeakEC     uint64  // λ_EC charged in the bound
	LinkTime   float64 // seconds the frame took on the link
	Finite     finitekey.Result
	Steps      []StepMetrics
	Wall       time.Duration
}

// ReconEfficiency is f = λ_EC / (n_Z·h(QBER_Z)) (0 when QBER_Z = 0).
func (r Result) ReconEfficiency() float64 {
	h := finitekey.H2(r.QBERZ)
	if h == 0 || r.SiftedBits == 0 {
		return 0
	}
	return float64(r.LeakEC) / (float64(r.SiftedBits) * h)
}

// envelope types
const (
	tHello    = 1
	tHelloAck = 2
	tFrame    = 3
	tIndices  = 4
	tStep     = 5
	tFin      = 6
	tAbort    = 0xff
)

const protoVersion = 1

type party struct {
	cfg   Config
	role  steps.Role
	ch    quantum.Channel
	id    [16]byte
	res   Result
	start time.Time
	// After estimation (the front half): the sifted key, the bound's
	// parameters and the bits disclosed so far.
	key  bits.Vec
	fp   finitekey.Params
	leak uint64
}

func (p *party) send(ctx context.Context, typ uint8, payload []byte) error {
	b := make([]byte, 0, 17+len(payload))
	b = append(b, typ)
	b = append(b, p.id[:]...)
	b = append(b, payload...)
	if err := p.ch.Send(ctx, b); err != nil {
		return fmt.Errorf("%w: send: %w", ErrAbort, err)
	}
	return nil
}

// recv returns the next message of this session, skipping stale ones of
// other sessions.
func (p *party) recv(ctx context.Context, want uint8) ([]byte, error) {
	for {
		b, err := p.ch.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: receive: %w", ErrAbort, err)
		}
		if len(b) < 17 {
			return nil, fmt.Errorf("%w: short message", ErrProtocol)
		}
		if !bytes.Equal(b[1:17], p.id[:]) {
			if b[0] == tHello {
				return nil, fmt.Errorf("%w: a new session started", ErrProtocol)
			}
			continue
		}
		switch b[0] {
		case want:
			return b[17:], nil
		case tAbort:
			return nil, fmt.Errorf("%w: %s", ErrPeer, string(b[17:]))
		}
		return nil, fmt.Errorf("%w: got message type %d, want %d", ErrProtocol, b[0], want)
	}
}

// abort tells the peer (best effort) and returns err.
func (p *party) abort(err error) error {
	if errors.Is(err, ErrPeer) || errors.Is(err, ErrNoKey) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.send(ctx, tAbort, []byte(err.Error()))
	p.cfg.Logger.Warn("qkd session aborted", "role", p.role.String(), "block", hex.EncodeToString(p.id[:]), "err", err)
	return err
}

func (p *party) seed(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(p.cfg.Rand, b); err != nil {
		return nil, fmt.Errorf("session: randomness: %w", err)
	}
	return b, nil
}

// runStep runs one step to completion over the channel.
func (p *party) runStep(ctx context.Context, idx uint8, kind steps.Kind, params, seed, input []byte) (steps.Result, error) {
	start := time.Now()
	inst, err := p.cfg.Runner.New(ctx, kind, p.role, params, seed)
	if err != nil {
		return steps.Result{}, fmt.Errorf("%w: %s: %w", ErrAbort, kind, err)
	}
	defer inst.Close(context.Background())
	res, err := inst.Step(ctx, steps.Input{Data: input})
	for err == nil {
		if res.HasMsg {
			if err = p.send(ctx, tStep, append([]byte{idx}, res.Msg...)); err != nil {
				break
			}
		}
		if res.Done {
			break
		}
		var m []byte
		if m, err = p.recv(ctx, tStep); err != nil {
			break
		}
		if len(m) < 1 || m[0] != idx {
			err = fmt.Errorf("%w: message for step %v during step %d", ErrProtocol, m[:min(1, len(m))], idx)
			break
		}
		res, err = inst.Step(ctx, steps.Input{Peer: m[1:], HasPeer: true})
	}
	if err != nil {
		if !errors.Is(err, ErrAbort) {
			err = fmt.Errorf("%w: %s: %w", ErrAbort, kind, err)
		}
		return steps.Result{}, err
	}
	info := p.cfg.Runner.Plugin(kind)
	p.res.Steps = append(p.res.Steps, StepMetrics{
		Kind: kind, Plugin: info.Name + "@" + info.Version,
		Leaked: res.Leaked, Disclosed: res.Disclosed, Corrected: res.Corrected, Rounds: res.Rounds,
		Wall: time.Since(start),
	})
	return res, nil
}

type hello struct {
	Version   uint8
	Frame     uint64
	Pulses    uint64
	TagBits   uint8
	EpsSec    float64
	Identity  string
	Mu, Probs [finitekey.K]float64
	Seconds   float64
}

func (h hello) encode() []byte {
	w := wire.Writer{}
	w.U8(h.Version)
	w.U64(h.Frame)
	w.U64(h.Pulses)
	w.U8(h.TagBits)
	w.F64(h.EpsSec)
	w.Bytes([]byte(h.Identity))
	return w.B
}

func decodeHello(b []byte) (hello, error) {
	r := wire.Reader{B: b}
	h := hello{Version: r.U8(), Frame: r.U64(), Pulses: r.U64(), TagBits: r.U8(), EpsSec: r.F64(), Identity: string(r.Bytes())}
	if err := r.Done(); err != nil {
		return hello{}, fmt.Errorf("%w: hello: %w", ErrProtocol, err)
	}
	return h, nil
}

// frame info: Alice → Bob after sending the frame
func encodeFrame(mu, probs [finitekey.K]float64, seconds float64) []byte {
	w := wire.Writer{}
	for k := 0; k < finitekey.K; k++ {
		w.F64(mu[k])
		w.F64(probs[k])
	}
	w.F64(seconds)
	return w.B
}

func decodeFrame(b []byte) (mu, probs [finitekey.K]float64, seconds float64, err error) {
	r := wire.Reader{B: b}
	for k := 0; k < finitekey.K; k++ {
		mu[k], probs[k] = r.F64(), r.F64()
	}
	seconds = r.F64()
	if e := r.Done(); e != nil {
		err = fmt.Errorf("%w: frame info: %w", ErrProtocol, e)
	}
	return
}

func encodeIndices(d []quantum.Detection) []byte {
	b := binary.AppendUvarint(nil, uint64(len(d)))
	prev := uint64(0)
	for i, x := range d {
		delta := x.Index - prev
		if i == 0 {
			delta = x.Index
		}
		b = binary.AppendUvarint(b, delta)
		prev = x.Index
	}
	return b
}

func decodeIndices(b []byte, max uint64) ([]uint64, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: indices", ErrProtocol)
	}
	b = b[k:]
	out := make([]uint64, n)
	var cur uint64
	for i := range out {
		d, k := binary.Uvarint(b)
		if k <= 0 || (i > 0 && d == 0) {
			return nil, fmt.Errorf("%w: indices", ErrProtocol)
		}
		b = b[k:]
		cur += d
		if cur >= max {
			return nil, fmt.Errorf("%w: index %d beyond frame", ErrProtocol, cur)
		}
		out[i] = cur
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: indices: trailing bytes", ErrProtocol)
	}
	return out, nil
}

func u32(x uint32) []byte   { w := wire.Writer{}; w.U32(x); return w.B }
func f64(x float64) []byte  { w := wire.Writer{}; w.F64(x); return w.B }
func vec(v bits.Vec) []byte { w := wire.Writer{}; w.Vec(v); return w.B }

func decodeVec(b []byte) (bits.Vec, error) {
	r := wire.Reader{B: b}
	v := r.Vec()
	if err := r.Done(); err != nil {
		return bits.Vec{}, fmt.Errorf("%w: step output: %w", ErrProtocol, err)
	}
	return v, nil
}

// estimate runs the estimate step on a sifted block and checks that the
// bound can leave a key. Both parties compute the same bounds from the same
// public data.
func (p *party) estimate(ctx context.Context, sifted []byte, mu, probs [finitekey.K]float64) error {
	seed, err := p.seed(32)
	if err != nil {
		return err
	}
	er, err := p.runStep(ctx, 1, steps.Estimate, nil, seed, sifted)
	if err != nil {
		return err
	}
	est, err := estimate.DecodeOutput(er.Output)
	if err != nil || len(est.NZ) != finitekey.K {
		return fmt.Errorf("%w: estimate output: %v", ErrProtocol, err)
	}
	p.res.SiftedBits = est.Key.N
	for k := range est.NX {
		p.res.TestBits += int(est.NX[k])
	}
	p.res.QBERX = est.QBERX()
	fp := finitekey.Params{Mu: mu, P: probs, EpsSec: p.cfg.EpsSec, EpsCor: math.Ldexp(1, -p.cfg.TagBits)}
	copy(fp.NZ[:], est.NZ)
	copy(fp.NX[:], est.NX)
	copy(fp.MX[:], est.MX)
	// abort early if even a free error correction would leave no key
	if fr, err := finitekey.SecretLength(fp); err != nil || fr.L < 8 {
		p.res.Finite = fr
		return fmt.Errorf("%w: QBER_X %.4f, n_Z %d: %s %v", ErrNoKey, p.res.QBERX, est.Key.N, fr.Reason, err)
	}
	p.key, p.fp, p.leak = est.Key, fp, p.res.Steps[0].Leaked+er.Leaked
	return nil
}

// finish runs reconcile → verify → amplify on the estimated block.
func (p *party) finish(ctx context.Context) error {
	seed, err := p.seed(32)
	if err != nil {
		return err
	}
	rr, err := p.runStep(ctx, 2, steps.Reconcile, f64(p.res.QBERX), seed, vec(p.key))
	if err != nil {
		return err
	}
	key, err := decodeVec(rr.Output)
	if err != nil || key.N != p.key.N {
		return fmt.Errorf("%w: reconcile output (%d bits, want %d): %v", ErrProtocol, key.N, p.key.N, err)
	}
	fp, leak := p.fp, p.leak+rr.Leaked
	p.res.LeakEC = leak
	if rr.Corrected > 0 && key.N > 0 {
		p.res.QBERZ = float64(rr.Corrected) / float64(key.N)
	}

	if seed, err = p.seed((key.N + p.cfg.TagBits + 6) / 8); err != nil {
		return err
	}
	vr, err := p.runStep(ctx, 3, steps.Verify, []byte{uint8(p.cfg.TagBits)}, seed, vec(key))
	if err != nil {
		return err
	}
	if len(vr.Output) != 1 || vr.Output[0] != 1 {
		return ErrVerify
	}

	fp.LeakEC = float64(leak)
	fr, err := finitekey.SecretLength(fp)
	p.res.Finite = fr
	l := fr.L &^ 7
	if err != nil || l < 8 {
		return fmt.Errorf("%w: ℓ = %d after λ_EC = %d: %s %v", ErrNoKey, fr.L, leak, fr.Reason, err)
	}
	if l > int64(key.N) {
		l = int64(key.N) &^ 7
	}
	if seed, err = p.seed((key.N + int(l) + 6) / 8); err != nil {
		return err
	}
	ar, err := p.runStep(ctx, 4, steps.Amplify, u32(uint32(l)), seed, vec(key))
	if err != nil {
		return err
	}
	final, err := decodeVec(ar.Output)
	if err != nil || final.N != int(l) {
		return fmt.Errorf("%w: amplify output: %d bits, want %d", ErrProtocol, final.N, l)
	}
	p.res.Key = final.Bytes()
	p.res.FinalBits = final.N
	return nil
}

// Alice runs the transmitter's half of a session on frame frame.
func Alice(ctx context.Context, cfg Config, tx quantum.Transmitter, ch quantum.Channel, frame uint64) (Result, error) {
	a, res, err := AliceAhead(ctx, cfg, tx, ch, frame)
	if err != nil {
		return res, err
	}
	return a.Finish(ctx, cfg.Runner, ch)
}

// Ahead is a session whose front half is done — the frame sent and
// detected, sifted and estimated — and whose back half — reconciliation,
// verification and amplification — Finish runs. Between the two halves it
// holds the sifted key in memory; Discard clears it. The live link runs the
// front half of the next frame beside the back half of the current one
// (docs/ARCHITECTURE.md, "Sessions are pipelined"); the messages of both
// carry their session's ID, so Mux can keep them apart on one channel.
type Ahead struct{ p *party }

// AliceAhead runs the front half of Alice's session on frame frame. On an
// error the Result holds what the session measured before it aborted.
func AliceAhead(ctx context.Context, cfg Config, tx quantum.Transmitter, ch quantum.Channel, frame uint64) (*Ahead, Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, Result{}, err
	}
	if len(cfg.IntensityProbs) != finitekey.K || cfg.Pulses == 0 {
		return nil, Result{}, fmt.Errorf("session: need %d intensity probabilities and Pulses > 0", finitekey.K)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	p := &party{cfg: cfg, role: steps.Alice, ch: ch, start: time.Now()}
	if _, err := io.ReadFull(cfg.Rand, p.id[:]); err != nil {
		return nil, Result{}, fmt.Errorf("session: randomness: %w", err)
	}
	if err := p.alice(ctx, tx, frame); err != nil {
		return nil, p.failed(), p.abort(err)
	}
	p.res.Wall = time.Since(p.start)
	return &Ahead{p: p}, Result{}, nil
}

// ID is the session's ID, which becomes the block ID.
func (a *Ahead) ID() [16]byte { return a.p.id }

// Identity is the plugin set's identity the front half ran: Finish needs
// a runner of the same identity.
func (a *Ahead) Identity() string { return a.p.cfg.Runner.Identity() }

// Discard clears the sifted key of a session that will not be finished.
func (a *Ahead) Discard() { clear(a.p.key.W) }

// Finish runs the back half over ch (the front half's channel or a later
// one, with the same peer) with runner, which must have the front half's
// identity. The Ahead is spent whatever the outcome.
func (a *Ahead) Finish(ctx context.Context, runner host.Runner, ch quantum.Channel) (Result, error) {
	p := a.p
	defer a.Discard()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	start := time.Now()
	p.ch = ch
	if runner == nil || runner.Identity() != p.cfg.Runner.Identity() {
		return p.failed(), p.abort(fmt.Errorf("%w: the block was sifted with another plugin set", ErrMismatch))
	}
	p.cfg.Runner = runner
	if err := p.back(ctx); err != nil {
		clear(p.res.Key) // amplified before the failure: never handed out
		p.res.Key, p.res.FinalBits = nil, 0
		return p.failed(), p.abort(err)
	}
	p.res.BlockID = p.id
	p.res.Wall += time.Since(start)
	return p.res, nil
}

// failed is the Result of an aborted session: what it measured, no key.
func (p *party) failed() Result {
	return Result{BlockID: p.id, Steps: p.res.Steps, QBERX: p.res.QBERX, Finite: p.res.Finite}
}

// back is the back half of either role; Bob tells Alice the errors
// reconciliation corrected.
func (p *party) back(ctx context.Context) error {
	if err := p.finish(ctx); err != nil {
		return err
	}
	if p.role == steps.Bob {
		var fin [8]byte
		binary.LittleEndian.PutUint64(fin[:], p.res.Steps[2].Corrected)
		return p.send(ctx, tFin, fin[:])
	}
	fin, err := p.recv(ctx, tFin)
	if err != nil {
		return err
	}
	if len(fin) == 8 && p.res.SiftedBits > 0 {
		p.res.QBERZ = float64(binary.LittleEndian.Uint64(fin)) / float64(p.res.SiftedBits)
	}
	return nil
}

func (p *party) alice(ctx context.Context, tx quantum.Transmitter, frame uint64) error {
	h := hello{Version: protoVersion, Frame: frame, Pulses: p.cfg.Pulses, TagBits: uint8(p.cfg.TagBits), EpsSec: p.cfg.EpsSec, Identity: p.cfg.Runner.Identity()}
	if err := p.send(ctx, tHello, h.encode()); err != nil {
		return err
	}
	if _, err := p.recv(ctx, tHelloAck); err != nil {
		return err
	}
	stats, err := tx.Send(ctx, frame, p.cfg.Pulses)
	if err != nil {
		return fmt.Errorf("%w: quantum link: %w", ErrAbort, err)
	}
	defer tx.Release(frame)
	if len(stats.Intensities) != finitekey.K {
		return fmt.Errorf("%w: source has %d intensities, the bound needs %d", ErrAbort, len(stats.Intensities), finitekey.K)
	}
	var mu, probs [finitekey.K]float64
	copy(mu[:], stats.Intensities)
	copy(probs[:], p.cfg.IntensityProbs)
	p.res.Pulses = stats.Pulses
	p.res.LinkTime = stats.Seconds
	if err := p.send(ctx, tFrame, encodeFrame(mu, probs, stats.Seconds)); err != nil {
		return err
	}
	ib, err := p.recv(ctx, tIndices)
	if err != nil {
		return err
	}
	idx, err := decodeIndices(ib, stats.Pulses)
	if err != nil {
		return err
	}
	recs, err := tx.Choices(frame, idx)
	if err != nil {
		return fmt.Errorf("%w: choices: %w", ErrAbort, err)
	}
	p.res.Detections = len(recs)
	in := sift.Input{Bits: bits.New(len(recs)), Bases: bits.New(len(recs)), Intensity: make([]uint8, len(recs))}
	for i, r := range recs {
		in.Bits.Set(i, r.Bit)
		in.Bases.Set(i, r.Basis)
		in.Intensity[i] = r.Intensity
	}
	seed, err := p.seed(32)
	if err != nil {
		return err
	}
	sr, err := p.runStep(ctx, 0, steps.Sift, []byte{finitekey.K}, seed, in.Encode(steps.Alice))
	if err != nil {
		return err
	}
	return p.estimate(ctx, sr.Output, mu, probs)
}

// Bob runs the receiver's half of the session Alice opens on ch.
func Bob(ctx context.Context, cfg Config, rx quantum.Receiver, ch quantum.Channel) (Result, error) {
	a, res, err := BobAhead(ctx, cfg, rx, ch)
	if err != nil {
		return res, err
	}
	return a.Finish(ctx, cfg.Runner, ch)
}

// BobAhead runs the front half of Bob's side of the session Alice opens
// on ch. On an error the Result holds what the session measured before it
// aborted.
func BobAhead(ctx context.Context, cfg Config, rx quantum.Receiver, ch quantum.Channel) (*Ahead, Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	p := &party{cfg: cfg, role: steps.Bob, ch: ch, start: time.Now()}
	// wait for a hello, whatever its session id
	var h hello
	for {
		b, err := ch.Recv(ctx)
		if err != nil {
			return nil, Result{}, fmt.Errorf("%w: receive: %w", ErrAbort, err)
		}
		if len(b) >= 17 && b[0] == tHello {
			copy(p.id[:], b[1:17])
			if h, err = decodeHello(b[17:]); err != nil {
				return nil, Result{}, p.abort(err)
			}
			break
		}
	}
	if err := p.bob(ctx, rx, h); err != nil {
		return nil, p.failed(), p.abort(err)
	}
	p.res.Wall = time.Since(p.start)
	return &Ahead{p: p}, Result{}, nil
}

func (p *party) bob(ctx context.Context, rx quantum.Receiver, h hello) error {
	switch {
	case h.Version != protoVersion:
		return fmt.Errorf("%w: protocol version %d, want %d", ErrMismatch, h.Version, protoVersion)
	case h.Identity != p.cfg.Runner.Identity():
		return fmt.Errorf("%w: plugin set: peer %q, ours %q", ErrMismatch, h.Identity, p.cfg.Runner.Identity())
	case int(h.TagBits) != p.cfg.TagBits || h.EpsSec != p.cfg.EpsSec:
		return fmt.Errorf("%w: security parameters: peer t=%d ε_sec=%g, ours t=%d ε_sec=%g", ErrMismatch, h.TagBits, h.EpsSec, p.cfg.TagBits, p.cfg.EpsSec)
	}
	if err := p.send(ctx, tHelloAck, nil); err != nil {
		return err
	}
	dets, err := rx.Receive(ctx, h.Frame, h.Pulses)
	if err != nil {
		return fmt.Errorf("%w: quantum link: %w", ErrAbort, err)
	}
	fb, err := p.recv(ctx, tFrame)
	if err != nil {
		return err
	}
	mu, probs, secs, err := decodeFrame(fb)
	if err != nil {
		return err
	}
	p.res.Pulses, p.res.LinkTime, p.res.Detections = h.Pulses, secs, len(dets)
	if err := p.send(ctx, tIndices, encodeIndices(dets)); err != nil {
		return err
	}
	in := sift.Input{Bits: bits.New(len(dets)), Bases: bits.New(len(dets))}
	for i, d := range dets {
		in.Bits.Set(i, d.Bit)
		in.Bases.Set(i, d.Basis)
	}
	seed, err := p.seed(32)
	if err != nil {
		return err
	}
	sr, err := p.runStep(ctx, 0, steps.Sift, []byte{finitekey.K}, seed, in.Encode(steps.Bob))
	if err != nil {
		return err
	}
	return p.estimate(ctx, sr.Output, mu, probs)
}
