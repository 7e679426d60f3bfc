// Package devstream is a quantum link driver for real QKD hardware: it reads
// the raw records a device exports — Alice's choice for every pulse, Bob's
// detections — from a byte stream in the documented QKDS format
// (FORMAT.md), and serves them to the QKD engine behind the same
// quantum.Transmitter and quantum.Receiver interfaces as the simulator.
//
// # Connecting hardware
//
// Make Alice's device (or a small bridge from its vendor export) write a
// QKDS Alice stream and Bob's a QKDS Bob stream, one frame record per block
// of pulses, and hand each stream to the site that runs that side:
//
//	f, _ := os.OpenFile("/dev/qkd0", os.O_RDONLY, 0) // or a net.Conn
//	tx, err := devstream.NewTransmitter(ctx, f, devstream.Options{})
//	frame, pulses, err := tx.Next(ctx) // which frame the device sends next
//	res, err := session.Alice(ctx, session.Config{Pulses: pulses, ...}, tx, ch, frame)
//
// and on Bob's side NewReceiver and session.Bob. The device runs on its
// own: Send and Receive take the next frame record off the stream and check
// that it is the frame and pulse count the session asked for
// (ErrFrameMismatch otherwise).
//
// # Format in brief
//
// A header (magic "QKDS", version 1, role, the intensities' mean photon
// numbers and probabilities, the pulse rate, a device name, CRC-32), then
// one record per frame (kind, frame number, pulse count, body length, body,
// CRC-32). An Alice body packs 4 bits per pulse (bit, basis, 2-bit
// intensity index): the device's logged QRNG output, not a seed (FORMAT.md
// says why). A Bob body lists the detections, one uvarint each of
// (index delta << 3 | double-click << 2 | basis << 1 | bit). Decoding is
// strict; every error wraps ErrFormat.
//
// # Cancellation
//
// Every read honours its context, but an io.Reader cannot be interrupted in
// general: readers with SetReadDeadline (net.Conn, pipes, character
// devices) get a past deadline; any other read is left blocked on a
// background goroutine and the call returns at once. The caller owns the
// reader and must close it when it gives up on the link, which releases
// that goroutine. After an interrupted read the driver is broken
// (ErrBroken).
//
// # Recording
//
// Writer writes the format; Record drives the simulator (quantum/sim) and
// writes both sides' streams, which is how testdata/ was made
// (go test ./quantum/devstream -run TestRecord -update); Compare computes
// the true QBER of a recorded pair; Dump renders a stream as text.
package devstream
