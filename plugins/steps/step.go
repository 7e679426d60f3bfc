// Package steps defines the contract every post-processing step implements,
// natively and as a WASM plugin (see plugins/ABI.md): a step is a state
// machine that the host feeds its input and the peer's last message, and that
// answers with its output, its next message for the peer, metrics and
// whether it is done.
package steps

import (
	"errors"
	"fmt"

	"qkdkms/plugins/steps/wire"
)

// ABIVersion is the plugin ABI version this package implements.
const ABIVersion = 1

// Role is the party a step instance plays.
type Role uint8

const (
	Alice Role = 0 // the transmitter's side
	Bob   Role = 1 // the receiver's side
)

func (r Role) String() string {
	switch r {
	case Alice:
		return "alice"
	case Bob:
		return "bob"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Kind names a step of the pipeline.
type Kind string

const (
	Sift      Kind = "sift"
	Estimate  Kind = "estimate"
	Reconcile Kind = "reconcile"
	Verify    Kind = "verify"
	Amplify   Kind = "amplify"
)

// Kinds lists the pipeline in order.
var Kinds = []Kind{Sift, Estimate, Reconcile, Verify, Amplify}

// Input is one call into a step. Data is the step's input and is given on
// the first call only; Peer is the peer's last message and is present
// (HasPeer) on every later call.
type Input struct {
	Data    []byte
	Peer    []byte
	HasPeer bool
}

// Metrics a step reports (cumulative over the instance's life).
type Metrics struct {
	// Leaked counts bits of information about the final key's source bits
	// made public (parities revealed by error correction, hash tags).
	Leaked uint64
	// Disclosed counts bits made public that are not part of the key
	// (e.g. the X-basis test bits).
	Disclosed uint64
	// Corrected counts bits the step changed (reconciliation: errors fixed).
	Corrected uint64
	// Rounds counts messages this step put on or took off the wire.
	Rounds uint32
}

// Result is what one call returns.
type Result struct {
	Output []byte // the step's output; meaningful once Done
	Msg    []byte // the next message for the peer, if HasMsg
	HasMsg bool
	Done   bool
	Metrics
}

// Step is one instance of a step for one party of one session.
type Step interface {
	Step(in Input) (Result, error)
}

// Factory creates a step instance. params are the step's parameters (the
// same on both sides), seed is randomness from the host.
type Factory func(role Role, params, seed []byte) (Step, error)

// Errors at the step boundary.
var (
	ErrProtocol = errors.New("step: protocol violation")
	ErrInput    = errors.New("step: bad input")
	ErrParams   = errors.New("step: bad parameters")
	ErrResult   = errors.New("step: malformed result")
)

const (
	flagDone   = 1
	flagHasMsg = 2
)

// EncodeResult is the ABI's result blob (plugins/ABI.md §5).
func EncodeResult(r Result) []byte {
	w := wire.Writer{B: make([]byte, 0, 48+len(r.Output)+len(r.Msg))}
	var f uint8
	if r.Done {
		f |= flagDone
	}
	if r.HasMsg {
		f |= flagHasMsg
	}
	w.U8(f)
	w.U8(0)
	w.U8(0)
	w.U8(0)
	w.U64(r.Leaked)
	w.U64(r.Disclosed)
	w.U64(r.Corrected)
	w.U32(r.Rounds)
	w.Bytes(r.Output)
	w.Bytes(r.Msg)
	return w.B
}

// DecodeResult parses a result blob strictly; the slices it returns alias b.
func DecodeResult(b []byte) (Result, error) {
	rd := wire.Reader{B: b}
	f := rd.U8()
	r1, r2, r3 := rd.U8(), rd.U8(), rd.U8()
	var r Result
	r.Leaked = rd.U64()
	r.Disclosed = rd.U64()
	r.Corrected = rd.U64()
	r.Rounds = rd.U32()
	r.Output = rd.Bytes()
	r.Msg = rd.Bytes()
	if err := rd.Done(); err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrResult, err)
	}
	if f&^(flagDone|flagHasMsg) != 0 || r1|r2|r3 != 0 {
		return Result{}, fmt.Errorf("%w: unknown flags %#x", ErrResult, f)
	}
	r.Done = f&flagDone != 0
	r.HasMsg = f&flagHasMsg != 0
	if !r.HasMsg && len(r.Msg) != 0 {
		return Result{}, fmt.Errorf("%w: message bytes without has_msg", ErrResult)
	}
	return r, nil
}
