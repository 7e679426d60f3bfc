// Package quantum is the quantum side of a QKD link: the Driver interface
// between the QKD engine and a quantum link, the classical channel the two
// parties talk over, and the security/finite-key mathematics.
//
// This file is the contract. Drivers live in subpackages (quantum/sim, ...).
package quantum

import (
	"context"
	"errors"
)

// Bases and the roles of the two parties.
const (
	BasisZ uint8 = 0 // key basis (rectilinear)
	BasisX uint8 = 1 // test basis (diagonal)
)

// PulseRecord is what Alice chose for one pulse.
type PulseRecord struct {
	Index     uint64 // pulse index within the frame
	Bit       uint8  // 0 or 1
	Basis     uint8  // BasisZ or BasisX
	Intensity uint8  // index into the source's intensity list (0 = signal)
}

// Detection is one pulse Bob registered a click for. Pulses with no click
// are not reported. Double clicks are resolved to a random bit by the
// receiver (squashing), as real post-processing does.
type Detection struct {
	Index uint64
	Basis uint8
	Bit   uint8
}

// FrameStats says what Alice sent in a frame.
type FrameStats struct {
	Pulses       uint64    // pulses emitted
	PerIntensity []uint64  // pulses emitted per intensity index
	Intensities  []float64 // mean photon number per intensity index
	Seconds      float64   // time the frame took on the link (simulated or real)
}

// Transmitter is Alice's end of a quantum link.
type Transmitter interface {
	// Send emits a frame of n pulses and returns what was sent.
	Send(ctx context.Context, frame uint64, n uint64) (FrameStats, error)
	// Choices returns Alice's choices for the given pulse indices of a frame
	// sent earlier, in the order asked. Indices never sent are an error.
	Choices(frame uint64, indices []uint64) ([]PulseRecord, error)
	// Release forgets a frame's choices.
	Release(frame uint64)
}

// Receiver is Bob's end of a quantum link.
type Receiver interface {
	// Receive measures a frame of n pulses and returns the detections in
	// increasing index order.
	Receive(ctx context.Context, frame uint64, n uint64) ([]Detection, error)
}

// Channel is the authenticated classical channel between the two parties of
// a session. Messages are delivered in order, whole, or not at all.
type Channel interface {
	Send(ctx context.Context, msg []byte) error
	Recv(ctx context.Context) ([]byte, error)
}

// ErrLinkDown: the quantum link or the classical channel is gone.
var ErrLinkDown = errors.New("quantum: link down")
