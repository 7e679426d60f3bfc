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
// # The "devstream" link driver
//
// The package registers the link driver "devstream" (quantum.Register),
// which a node chooses per peer in its configuration:
//
//	"links": [{"peer": "receiver_app", "driver": "devstream",
//	           "options": {"source": "tcp:qkd-alice.lab:7001", "stall_timeout": "5s", "max_lag_frames": 16}}]
//
// Options (LinkOptions): "source" is "file:PATH", "tcp:HOST:PORT" or
// "unix:PATH" (required); "loop" replays a file, its frame numbers offset
// by the file's frame span on each pass (files only; both sites must loop
// files of the same frames); "stall_timeout" (default "10s") is how long a
// session waits for the next frame; "max_lag_frames" (default 16) is how
// many frames a live stream buffers before the oldest are dropped. The
// factory only validates them; Source (Alice's site, the KME ID that sorts
// first) and Sink (Bob's site) open the stream per link connection — the
// node connects as a client to the device's address — read its header and
// refuse the other party's stream (ErrRole).
//
// A goroutine decodes records as they arrive. Alice's Next returns the
// newest frame of a live stream (older ones are skipped: the device does
// not wait for post-processing) and the next frame of a file; Bob's
// Receive(frame) discards older frames and fails with ErrGap when the
// stream is already past it. A gap, a CRC error, an out-of-order frame
// (ErrFrameOrder), the end of the stream or no frame within stall_timeout
// (ErrStall) fails that call with a *StreamError wrapping the cause, which
// aborts the session (nothing is committed); a failed or stalled live
// stream is reconnected by the next call. Health reports the stream
// position, frames read, skipped and delivered, the lag (frames buffered),
// and the last error.
//
// Serve (`qkdkms devstream serve`) is a device emulator: it runs the
// simulator and streams Alice's and Bob's records live on two listeners,
// a frame of n pulses every n/rate seconds, so the whole path runs without
// hardware.
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
