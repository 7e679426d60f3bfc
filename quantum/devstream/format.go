package devstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"unicode/utf8"

	"qkdkms/quantum"
)

// Format constants (FORMAT.md).
const (
	// Magic opens every stream.
	Magic = "QKDS"
	// Version is the only stream version this package reads and writes.
	Version = 1

	// MaxIntensities is the number of intensity levels a 2-bit intensity
	// field can name.
	MaxIntensities = 4
	// MaxPulses bounds the pulses of one frame record (2^32: 4.3 s at 1 GHz,
	// a 2 GiB Alice record).
	MaxPulses = 1 << 32
	// MaxBody bounds the body of one record.
	MaxBody = MaxPulses/2 + 1024
)

// Record kinds.
const (
	KindAlice byte = 'A' // Alice frame: packed choices for every pulse
	KindBob   byte = 'B' // Bob frame: the detection list
	// Kinds 0x80..0xff are extension records (device telemetry and the
	// like): a version 1 reader checks their CRC and skips them.
	kindExtension byte = 0x80
)

// Role says which party's device wrote a stream.
type Role uint8

// Roles.
const (
	RoleAlice Role = 1
	RoleBob   Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleAlice:
		return "alice"
	case RoleBob:
		return "bob"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

func (r Role) kind() byte {
	if r == RoleAlice {
		return KindAlice
	}
	return KindBob
}

// Errors. Every decoding error wraps ErrFormat; a stream that ends at a
// record boundary when a frame is wanted wraps ErrEndOfStream.
var (
	ErrFormat    = errors.New("devstream: malformed device stream")
	ErrMagic     = fmt.Errorf("%w: bad magic (not a QKDS stream)", ErrFormat)
	ErrVersion   = fmt.Errorf("%w: unknown version", ErrFormat)
	ErrTruncated = fmt.Errorf("%w: truncated", ErrFormat)
	ErrCRC       = fmt.Errorf("%w: CRC mismatch", ErrFormat)
	ErrRole      = fmt.Errorf("%w: wrong role", ErrFormat)
	// ErrIndexRange: a detection index is not below the frame's pulse count.
	ErrIndexRange = fmt.Errorf("%w: detection index beyond the frame", ErrFormat)
	// ErrIndexOrder: detection indices are not strictly increasing.
	ErrIndexOrder = fmt.Errorf("%w: detection indices not increasing", ErrFormat)
	// ErrFrameOrder: frame numbers are not strictly increasing.
	ErrFrameOrder = fmt.Errorf("%w: frame numbers not increasing", ErrFormat)

	// ErrEndOfStream: the device stream ended (cleanly, at a record
	// boundary). It wraps quantum.ErrLinkDown.
	ErrEndOfStream = fmt.Errorf("%w: device stream ended", quantum.ErrLinkDown)
	// ErrFrameMismatch: the session asked for a different frame number or
	// pulse count than the device stream holds next.
	ErrFrameMismatch = errors.New("devstream: frame mismatch")
	// ErrUnknownPulse: Choices was asked about a frame or pulse not sent.
	ErrUnknownPulse = errors.New("devstream: pulse not sent")
	// ErrBroken: an earlier read was interrupted (context ended) or failed
	// mid-record; the stream position is lost. Close the reader and open a
	// new driver on a fresh stream.
	ErrBroken = errors.New("devstream: stream broken by an interrupted read")
)

var crcTable = crc32.IEEETable

// Header opens a stream: what the device is and how to read its records.
type Header struct {
	Version uint8 // Version (set by the writer)
	Role    Role
	// Intensities are the mean photon numbers μ_k of the source, index 0
	// the signal. Required (1..4) for Alice, optional (0..4) for Bob.
	Intensities []float64
	// IntensityProbs are the design probabilities p_k the source draws
	// intensity k with; one per intensity, summing to 1.
	IntensityProbs []float64
	// PulseRate is the source repetition rate in Hz; it converts pulses to
	// seconds (FrameStats.Seconds).
	PulseRate float64
	// Device identifies the device (vendor, model, serial), at most 255
	// bytes of UTF-8. Informational.
	Device string
}

// Validate checks the header's fields.
func (h Header) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: header: "+f, append([]any{ErrFormat}, a...)...) }
	switch {
	case h.Role != RoleAlice && h.Role != RoleBob:
		return bad("role %d", uint8(h.Role))
	case len(h.Intensities) > MaxIntensities:
		return bad("%d intensities, at most %d", len(h.Intensities), MaxIntensities)
	case h.Role == RoleAlice && len(h.Intensities) == 0:
		return bad("an Alice stream needs at least one intensity")
	case len(h.IntensityProbs) != len(h.Intensities):
		return bad("%d intensities but %d probabilities", len(h.Intensities), len(h.IntensityProbs))
	case !(h.PulseRate > 0) || math.IsInf(h.PulseRate, 0):
		return bad("pulse rate %v Hz", h.PulseRate)
	case len(h.Device) > 255 || !utf8.ValidString(h.Device):
		return bad("device name must be at most 255 bytes of UTF-8")
	}
	sum := 0.0
	for k, mu := range h.Intensities {
		p := h.IntensityProbs[k]
		if !(mu >= 0) || math.IsInf(mu, 0) {
			return bad("intensity %d: mean photon number %v", k, mu)
		}
		if !(p > 0 && p <= 1) {
			return bad("intensity %d: probability %v", k, p)
		}
		sum += p
	}
	if len(h.Intensities) > 0 && math.Abs(sum-1) > 1e-9 {
		return bad("intensity probabilities sum to %v", sum)
	}
	return nil
}

func appendHeader(b []byte, h Header) []byte {
	start := len(b)
	b = append(b, Magic...)
	b = append(b, Version, byte(h.Role), byte(len(h.Intensities)), 0)
	for _, mu := range h.Intensities {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(mu))
	}
	for _, p := range h.IntensityProbs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(p))
	}
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(h.PulseRate))
	b = append(b, byte(len(h.Device)))
	b = append(b, h.Device...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], crcTable))
}

// ---- frames ----

// AliceFrame is one Alice frame record: her choice for every pulse, packed
// one nibble per pulse (FORMAT.md): bit 0 = bit value, bit 1 = basis
// (1 = X), bits 2–3 = intensity index. Pulse i is the low nibble of byte
// i/2 when i is even, the high nibble when odd.
type AliceFrame struct {
	Frame  uint64
	Pulses uint64
	Packed []byte // (Pulses+1)/2 bytes
}

// NewAliceFrame returns a frame of n pulses, every choice zero (bit 0,
// basis Z, intensity 0).
func NewAliceFrame(frame, n uint64) *AliceFrame {
	return &AliceFrame{Frame: frame, Pulses: n, Packed: make([]byte, (n+1)/2)}
}

// Set records the choice for pulse i (i < Pulses; p.Index is ignored).
func (f *AliceFrame) Set(i uint64, p quantum.PulseRecord) {
	v := p.Bit&1 | (p.Basis&1)<<1 | (p.Intensity&3)<<2
	sh := (i & 1) * 4
	f.Packed[i/2] = f.Packed[i/2]&^(0xf<<sh) | v<<sh
}

// At returns the choice for pulse i (i < Pulses).
func (f *AliceFrame) At(i uint64) quantum.PulseRecord {
	v := f.Packed[i/2] >> ((i & 1) * 4)
	return quantum.PulseRecord{Index: i, Bit: v & 1, Basis: (v >> 1) & 1, Intensity: (v >> 2) & 3}
}

// PerIntensity counts the pulses sent with each of k intensities.
func (f *AliceFrame) PerIntensity(k int) []uint64 {
	var c [16]uint64
	for _, b := range f.Packed {
		c[b&0xf]++
		c[b>>4]++
	}
	if f.Pulses&1 == 1 {
		c[f.Packed[len(f.Packed)-1]>>4]-- // the padding nibble (0)
	}
	out := make([]uint64, max(k, MaxIntensities))
	for v, n := range c {
		out[v>>2] += n
	}
	return out[:k]
}

// check validates the packed choices against k intensity levels.
func (f *AliceFrame) check(k int) error {
	if uint64(len(f.Packed)) != (f.Pulses+1)/2 {
		return fmt.Errorf("%w: Alice frame %d: %d packed bytes for %d pulses", ErrFormat, f.Frame, len(f.Packed), f.Pulses)
	}
	if k < MaxIntensities {
		// every nibble's intensity field (bits 2–3) must be < k; 8 bytes
		// at a time, then the byte that fails
		bad := func(w uint64) bool {
			switch k {
			case 3: // index 3: both bits set
				return w&(w>>1)&0x4444444444444444 != 0
			case 2: // index 2 or 3: the high bit set
				return w&0x8888888888888888 != 0
			default: // any index but 0
				return w&0xcccccccccccccccc != 0
			}
		}
		p := f.Packed
		i := 0
		for ; i+8 <= len(p); i += 8 {
			if bad(binary.LittleEndian.Uint64(p[i:])) {
				break
			}
		}
		for ; i < len(p); i++ {
			b := p[i]
			if int(b>>2&3) >= k || int(b>>6) >= k {
				j := uint64(2 * i)
				if int(b>>2&3) < k {
					j++
				}
				return fmt.Errorf("%w: Alice frame %d pulse %d: intensity index %d, the header declares %d", ErrFormat, f.Frame, j, f.At(j).Intensity, k)
			}
		}
	}
	if f.Pulses&1 == 1 && f.Packed[len(f.Packed)-1]>>4 != 0 {
		return fmt.Errorf("%w: Alice frame %d: padding nibble not zero", ErrFormat, f.Frame)
	}
	return nil
}

// Click is one detection as a device reports it.
type Click struct {
	Index  uint64 // pulse index within the frame
	Basis  uint8  // measurement basis (quantum.BasisZ or BasisX)
	Bit    uint8  // detector that fired; 0 when Double
	Double bool   // both detectors fired (double click)
}

// BobFrame is one Bob frame record: the detections in increasing index
// order.
type BobFrame struct {
	Frame  uint64
	Pulses uint64
	Clicks []Click
}

// Each click is one uvarint: (index delta) << 3 | double << 2 | basis << 1
// | bit, the delta being the index itself for the first click and
// index − previous index (≥ 1) after it.
func appendClicks(b []byte, f *BobFrame) ([]byte, error) {
	b = binary.AppendUvarint(b, uint64(len(f.Clicks)))
	var prev uint64
	for i, c := range f.Clicks {
		if c.Index >= f.Pulses {
			return nil, fmt.Errorf("%w: Bob frame %d: index %d, frame has %d pulses", ErrIndexRange, f.Frame, c.Index, f.Pulses)
		}
		d := c.Index
		if i > 0 {
			if c.Index <= prev {
				return nil, fmt.Errorf("%w: Bob frame %d: index %d after %d", ErrIndexOrder, f.Frame, c.Index, prev)
			}
			d = c.Index - prev
		}
		if c.Basis > 1 || c.Bit > 1 || (c.Double && c.Bit != 0) {
			return nil, fmt.Errorf("%w: Bob frame %d: click %d has basis %d bit %d double %v", ErrFormat, f.Frame, c.Index, c.Basis, c.Bit, c.Double)
		}
		v := d<<3 | uint64(c.Basis)<<1 | uint64(c.Bit)
		if c.Double {
			v |= 4
		}
		b = binary.AppendUvarint(b, v)
		prev = c.Index
	}
	return b, nil
}

func decodeClicks(frame, pulses uint64, body []byte) ([]Click, error) {
	n, k := binary.Uvarint(body)
	if k <= 0 {
		return nil, fmt.Errorf("%w: Bob frame %d: bad detection count", ErrFormat, frame)
	}
	body = body[k:]
	if n > uint64(len(body)) || n > pulses {
		return nil, fmt.Errorf("%w: Bob frame %d: %d detections in %d bytes and %d pulses", ErrFormat, frame, n, len(body), pulses)
	}
	out := make([]Click, n)
	var idx uint64
	for i := range out {
		var v uint64
		if len(body) > 0 && body[0] < 0x80 {
			v, body = uint64(body[0]), body[1:] // one byte: gaps below 16 pulses
		} else {
			var k int
			v, k = binary.Uvarint(body)
			if k <= 0 {
				return nil, fmt.Errorf("%w: Bob frame %d: detection %d: bad varint", ErrFormat, frame, i)
			}
			body = body[k:]
		}
		d := v >> 3
		if i > 0 {
			if d == 0 {
				return nil, fmt.Errorf("%w: Bob frame %d: detection %d repeats index %d", ErrIndexOrder, frame, i, idx)
			}
			if d >= pulses-idx {
				return nil, fmt.Errorf("%w: Bob frame %d: detection %d at index %d+%d, frame has %d pulses", ErrIndexRange, frame, i, idx, d, pulses)
			}
			idx += d
		} else {
			if d >= pulses {
				return nil, fmt.Errorf("%w: Bob frame %d: detection 0 at index %d, frame has %d pulses", ErrIndexRange, frame, d, pulses)
			}
			idx = d
		}
		c := Click{Index: idx, Basis: uint8(v>>1) & 1, Bit: uint8(v) & 1, Double: v&4 != 0}
		if c.Double && c.Bit != 0 {
			return nil, fmt.Errorf("%w: Bob frame %d: double click at %d with bit set", ErrFormat, frame, idx)
		}
		out[i] = c
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("%w: Bob frame %d: %d trailing bytes", ErrFormat, frame, len(body))
	}
	return out, nil
}

// appendRecord frames a record: kind, frame, pulses, body length (uvarints),
// body, CRC-32 (IEEE, little-endian) over everything before it.
func appendRecord(b []byte, kind byte, frame, pulses uint64, body []byte) []byte {
	start := len(b)
	b = append(b, kind)
	b = binary.AppendUvarint(b, frame)
	b = binary.AppendUvarint(b, pulses)
	b = binary.AppendUvarint(b, uint64(len(body)))
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], crcTable))
}
